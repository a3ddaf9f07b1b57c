"""Which GPUs a worker measures: the ones its device parameter asks for, then the ones the
engine really holds, and the visible rest (reported apart, never summed)."""
from __future__ import annotations

import os
from typing import Any

from joulebench.spec import ENV_ASSIGNED_GPUS, ENV_CONTAINER_ENGINE, ENV_GPU_PASSTHROUGH, GpuPassthrough


def used_gpus(intended: list[int] | None, used: list[int] | None, devices: list[Any]) -> list[Any]:
    """The devices that really hold the model (a backend may spread over several GPUs)."""
    from joulebench.devices import resolve_gpus

    if used and sorted(used) != sorted(intended or []):
        return resolve_gpus(used)
    return devices


def unused_gpus(devices: list[Any]) -> list[Any]:
    """The visible GPUs a worker does not use (none when it uses no GPU)."""
    from joulebench.devices import resolve_gpus

    mine = {d.info.uuid for d in devices}
    try:
        return [g for g in resolve_gpus(None) if g.info.uuid not in mine] if devices else []
    except Exception:  # noqa: BLE001
        return []


def missing_piece(method: str | None, engine: str | None) -> str:
    """What the container engine lacks when a container's GPUs did not arrive (the error's advice)."""
    eng = (engine or "").lower()
    if method == GpuPassthrough.DEVICE_REQUEST and "podman" in eng:
        return ("Podman ignores device requests through its Docker API: use "
                "runner_options.docker.gpu_passthrough: device-nodes")
    if method == GpuPassthrough.DEVICE_REQUEST:
        return ("the engine did not honour the NVIDIA device request: install nvidia-container-toolkit and "
                "configure the engine (`nvidia-ctk runtime configure --runtime=docker`, then restart it); on "
                "Podman use runner_options.docker.gpu_passthrough: device-nodes")
    if method == GpuPassthrough.CDI:
        return ("the CDI devices (nvidia.com/gpu=...) did not give the container these GPUs: the CDI spec Podman "
                "reads (/etc/cdi, /var/run/cdi) must name them and match the driver; regenerate it with "
                "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` (again after a driver update)")
    if method == GpuPassthrough.DEVICE_NODES:
        return ("the device nodes (/dev/nvidiaN, /dev/nvidiactl, /dev/nvidia-uvm) or the driver bind "
                "(libcuda.so.1, set runner_options.docker.driver_dir) did not reach the container")
    return ("no GPU passthrough was named; if this runs in a container, its engine did not pass the GPU "
            "(Docker: nvidia-container-toolkit; Podman: runner_options.docker.gpu_passthrough: device-nodes)")


class GpuUnavailable(Exception):
    """The worker was given GPUs (its container's) but CUDA or NVML sees none of them: the trials fail at
    once (``ErrorKind.GPU_UNAVAILABLE``) instead of measuring the CPU. The message names what the container
    engine is missing for the passthrough method used."""


def assigned_gpus() -> list[str]:
    """The host GPUs (UUIDs, or host indices) the runner gave this worker's container; [] when none."""
    raw = os.environ.get(ENV_ASSIGNED_GPUS, "")
    return [g.strip() for g in raw.split(",") if g.strip()]


def check_assigned_gpus(*, cuda_check: bool = True) -> list[Any]:
    """The assigned GPUs as NVML devices, by UUID ([] when none were assigned). Raises
    :class:`GpuUnavailable` when NVML or CUDA does not see them."""
    from joulebench.devices import resolve_gpus

    assigned = assigned_gpus()
    if not assigned:
        return []
    method = os.environ.get(ENV_GPU_PASSTHROUGH)
    engine = os.environ.get(ENV_CONTAINER_ENGINE)
    where = (f"{engine or 'the container engine'} with gpu_passthrough {method}" if method
             else "this worker's environment")
    advice = missing_piece(method, engine)
    try:
        visible = resolve_gpus(None)
    except Exception as e:  # noqa: BLE001 - NVML present but broken
        visible, why = [], f"NVML failed: {e}"
    else:
        why = "NVML sees no GPU" if not visible else ""
    uuids = [g for g in assigned if g.startswith("GPU-") or g.startswith("MIG-")]
    if visible and uuids:
        seen = {d.info.uuid for d in visible}
        missing = [u for u in uuids if u not in seen]
        if missing:
            visible, why = [], f"NVML sees {sorted(seen)}, not the assigned {missing}"
    if visible and cuda_check:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None and (not torch.cuda.is_available() or torch.cuda.device_count() < len(assigned)):
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            visible, why = [], f"CUDA sees {n} of the {len(assigned)} assigned GPU(s) (NVML sees them)"
    if not visible:
        raise GpuUnavailable(f"GPU unavailable: this worker was assigned GPU(s) {', '.join(assigned)} by "
                             f"{where}, but {why}; refusing to measure the CPU instead. Fix: {advice}")
    if uuids:
        from joulebench.devices.nvml import gpus_by_uuid

        return gpus_by_uuid(uuids)
    return visible
