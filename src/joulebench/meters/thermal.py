"""Optional thermal gate: wait until every GPU is within a band of the study's reference
start temperature, bounded by a timeout (no fixed sleeps). METHODOLOGY.md section 3, phase 6.

A GPU colder than the band cannot be warmed by waiting, so the gate returns at
once for it (``within_band`` False, not timed out); a hotter one is waited for.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

from joulebench.devices.base import Device


@dataclass(frozen=True)
class ThermalResult:
    start_temperature_c: float | None      # hottest measured GPU when the gate began
    reference_c: float | None
    waited_s: float
    within_band: bool
    timed_out: bool
    end_temperature_c: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _hottest(devices: list[Device]) -> tuple[float | None, float | None]:
    temps = []
    for d in devices:
        try:
            t = d.temperature_c()
        except Exception:
            t = None
        if t is not None:
            temps.append(t)
    return (max(temps), min(temps)) if temps else (None, None)


def thermal_gate(devices: list[Device], *, reference_c: float | None, band_c: float, timeout_s: float,
                 poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> ThermalResult:
    t0 = clock()
    hot, cold = _hottest(devices)
    if reference_c is None or hot is None:
        return ThermalResult(hot, reference_c, 0.0, True, False, hot)
    start = hot
    while True:
        if hot is not None and hot <= reference_c + band_c:
            within = cold is not None and cold >= reference_c - band_c
            return ThermalResult(start, reference_c, clock() - t0, within, False, hot)
        waited = clock() - t0
        if waited >= timeout_s:
            return ThermalResult(start, reference_c, waited, False, True, hot)
        sleep(min(poll_s, max(0.0, timeout_s - waited)))
        hot, cold = _hottest(devices)
