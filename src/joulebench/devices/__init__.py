"""Devices that joulebench meters: NVIDIA GPUs (NVML) and CPU/DRAM (RAPL).

Thin adapters with SI units out and vendor errors translated to
:class:`joulebench.errors.DeviceError`. Where the hardware is absent the
functions return [] / {} / None and never raise.
"""
from __future__ import annotations

from joulebench.devices.base import SAMPLE_KEYS, Device, DeviceInfo
from joulebench.devices.nvml import (FAKE_ENV, THROTTLE_MASK, THROTTLE_NAMES, NvmlDevice, gpu_environment,
                   gpus_by_uuid, load_nvml, nvml_available, resolve_gpus)
from joulebench.devices.rapl import RaplDevice, cpu_devices

__all__ = [
    "Device", "DeviceInfo", "SAMPLE_KEYS", "NvmlDevice", "RaplDevice", "resolve_gpus", "gpus_by_uuid",
    "cpu_devices", "gpu_environment", "nvml_available", "load_nvml", "FAKE_ENV", "THROTTLE_MASK",
    "THROTTLE_NAMES",
]
