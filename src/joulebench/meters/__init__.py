"""Meters over devices: the energy window, the sampler process, idle baselines, warm-up,
the thermal gate, pre-flight and typed quality flags (METHODOLOGY.md sections 2 to 5)."""
from __future__ import annotations

from joulebench.meters.baselines import IdleBaseline, baseline_drifted, baseline_is_stale, energy_above, measure_idle_power
from joulebench.meters.flags import Flag, QualityFlag, power_integral_j, window_flags
from joulebench.meters.preflight import preflight, preflight_flags
from joulebench.meters.sampler import Sampler, write_timeseries
from joulebench.meters.thermal import ThermalResult, thermal_gate
from joulebench.meters.warmup import WarmupState, warmup_converged, warmup_state
from joulebench.meters.window import DeviceEnergy, EnergyWindow, WindowMeasurement

__all__ = [
    "IdleBaseline", "baseline_drifted", "baseline_is_stale", "energy_above", "measure_idle_power",
    "Flag", "QualityFlag", "power_integral_j", "window_flags", "preflight", "preflight_flags",
    "Sampler", "write_timeseries", "ThermalResult", "thermal_gate", "warmup_converged", "warmup_state", "WarmupState",
    "DeviceEnergy", "EnergyWindow", "WindowMeasurement",
]
