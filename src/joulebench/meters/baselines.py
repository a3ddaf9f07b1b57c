"""Idle references (METHODOLOGY.md sections 1 and 3).

"Idle" is ambiguous by a factor of two on H100 (71-73 W with no context vs
127-129 W with a model loaded), so joulebench keeps both:

* **device idle**: per GPU, no CUDA context of ours; measured by the
  orchestrator on the host once per study and re-checked when stale or drifted;
* **loaded idle**: model loaded, no work; measured by the worker.

Both are counter energy over the interval divided by its length (never
polled power). Devices without a counter fall back to the mean of sampled
power, labelled ``nvml-power-average``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from joulebench.devices.base import Device
from joulebench.meters.window import EnergyWindow


@dataclass(frozen=True)
class IdleBaseline:
    power_w: float | None                         # total over the devices
    per_device_w: dict[str, float | None]          # by uuid
    duration_s: float
    measured_at: float                             # unix time (end of the interval)
    pstates: dict[str, int | None] = field(default_factory=dict)
    temperatures_c: dict[str, float | None] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IdleBaseline":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def subset(self, uuids: list[str]) -> "IdleBaseline":
        """The reference restricted to some devices (total recomputed)."""
        per = {u: self.per_device_w.get(u) for u in uuids}
        total = None if not per or any(v is None for v in per.values()) else sum(per.values())
        return IdleBaseline(total, per, self.duration_s, self.measured_at,
                            {u: self.pstates.get(u) for u in uuids},
                            {u: self.temperatures_c.get(u) for u in uuids}, self.source)


def _pstate(d: Device) -> int | None:
    fn = getattr(d, "_call", None)
    if fn is None:
        return None
    try:
        return fn("nvmlDeviceGetPerformanceState")
    except Exception:
        return None


def measure_idle_power(devices: list[Device], duration_s: float, *, sync: Callable[[], None] | None = None,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.perf_counter,
                       wall_clock: Callable[[], float] = time.time,
                       poll_s: float = 0.1) -> IdleBaseline:
    """Mean power of ``devices`` over ``duration_s`` of doing nothing (counter energy / time)."""
    if duration_s <= 0:
        raise ValueError("idle duration must be positive")
    pstates = {d.info.uuid: _pstate(d) for d in devices}
    temps = {d.info.uuid: EnergyWindow._temp(d) for d in devices}
    no_counter = [d for d in devices if d.energy_counter_j() is None]
    polled: dict[str, list[float]] = {d.info.uuid: [] for d in no_counter}
    window = EnergyWindow([d for d in devices if d not in no_counter], sync=sync, clock=clock,
                          wall_clock=wall_clock)
    with window:
        if no_counter:
            end = clock() + duration_s
            while clock() < end:
                for d in no_counter:
                    p = d.instant_power_w()
                    p = p if p is not None else d.power_w()
                    if p is not None:
                        polled[d.info.uuid].append(p)
                sleep(min(poll_s, max(0.0, end - clock())))
        else:
            sleep(duration_s)
    w = window.result
    assert w is not None
    per: dict[str, float | None] = {}
    sources = set()
    for d in devices:
        u = d.info.uuid
        if u in polled:
            per[u] = (sum(polled[u]) / len(polled[u])) if polled[u] else None
            sources.add("nvml-power-average")
        else:
            e = w.device(u).energy_j
            per[u] = e / w.duration_s if e is not None and w.duration_s > 0 else None
            sources.add(w.device(u).source)
    total = None if not per or any(v is None for v in per.values()) else sum(per.values())
    srcs = sorted(s for s in sources if s)
    return IdleBaseline(power_w=total, per_device_w=per, duration_s=w.duration_s, measured_at=w.end_time_s,
                        pstates=pstates, temperatures_c=temps, source="+".join(srcs) if srcs else None)


def baseline_is_stale(baseline: IdleBaseline, *, max_age_s: float, now: float) -> bool:
    """True when the reference is older than ``max_age_s`` at unix time ``now``."""
    return (now - baseline.measured_at) > max_age_s


def baseline_drifted(reference: IdleBaseline, recheck: IdleBaseline, *, threshold_rel: float) -> bool:
    """True when any device (or the total) moved by more than ``threshold_rel`` of the reference."""
    pairs = [(reference.power_w, recheck.power_w)]
    pairs += [(reference.per_device_w.get(u), recheck.per_device_w.get(u)) for u in reference.per_device_w]
    for ref, new in pairs:
        if ref is None or new is None or not math.isfinite(ref) or ref <= 0:
            continue
        if abs(new - ref) / ref > threshold_rel:
            return True
    return False


def energy_above(energy_j: float | None, idle_w: float | None, duration_s: float) -> float | None:
    """Gross energy minus an idle power held for the window (METHODOLOGY.md section 4)."""
    if energy_j is None or idle_w is None:
        return None
    return energy_j - idle_w * duration_s
