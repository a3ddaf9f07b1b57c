"""Typed quality flags with one line of advice each (METHODOLOGY.md section 5).

A flag never drops a result: it says what to distrust and what to do.
:func:`window_flags` derives the flags of one measured window from the
window itself, its 10 Hz timeline and the idle reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from joulebench.meters.baselines import IdleBaseline
    from joulebench.meters.window import WindowMeasurement


class Flag(str, Enum):
    SHORT_WINDOW = "short_window"
    WARMUP_NOT_CONVERGED = "warmup_not_converged"
    THROTTLING = "throttling"
    TEMPERATURE_DRIFT = "temperature_drift"
    FOREIGN_PROCESS = "foreign_process"
    RESIDUAL_MEMORY = "residual_memory"
    IDLE_BASELINE_STALE = "idle_baseline_stale"
    IDLE_BASELINE_DRIFTED = "idle_baseline_drifted"
    POWER_OUT_OF_RANGE = "power_out_of_range"
    COUNTER_INTEGRAL_DISAGREE = "counter_integral_disagree"
    SAMPLER_GAPS = "sampler_gaps"
    COUNTER_UNAVAILABLE = "counter_unavailable"
    ENERGY_UNAVAILABLE = "energy_unavailable"
    HIGH_CV = "high_cv"
    THROUGHPUT_DOMINATED = "throughput_dominated"
    SYNTHETIC_WEIGHTS = "synthetic_weights"
    THERMAL_GATE_TIMEOUT = "thermal_gate_timeout"
    FAKE_DEVICE = "fake_device"
    NO_STEADY_WINDOW = "no_steady_window"
    LOW_BATCH_OCCUPANCY = "low_batch_occupancy"
    SHORT_STEADY_WINDOW = "short_steady_window"
    HOST_CPU_BUSY = "host_cpu_busy"
    REWARM_DRIFT = "rewarm_drift"

    @classmethod
    def _missing_(cls, value):
        """Accept member names and any case: ``Flag("IDLE_BASELINE_DRIFTED")``."""
        if isinstance(value, str):
            key = value.strip().lower()
            for member in cls:
                if member.value == key:
                    return member
        return None

    @property
    def advice(self) -> str:
        return _ADVICE[self]

    @property
    def severity(self) -> str:
        return "info" if self in _INFO else "warning"


_ADVICE: dict[Flag, str] = {
    Flag.SHORT_WINDOW: "The window is shorter than 100 energy-counter periods (10 s on H100), so counter "
                       "quantisation exceeds 1 %; raise measurement.min_window_s.",
    Flag.WARMUP_NOT_CONVERGED: "Throughput was still changing when warm-up stopped; raise warmup.max_passes "
                               "or loosen warmup.cv_target, and treat this trial with care.",
    Flag.THROTTLING: "Clocks were cut by a power cap or heat during the window; check cooling and the power "
                     "limit, and report that the configuration runs throttled.",
    Flag.TEMPERATURE_DRIFT: "GPU temperature changed a lot over the window; use the thermal gate or longer "
                            "warm-up so every trial starts in the same thermal state.",
    Flag.FOREIGN_PROCESS: "Another process used a measured GPU, so its energy is in this figure; run on "
                          "an idle GPU or accept the contamination explicitly.",
    Flag.RESIDUAL_MEMORY: "GPU memory was in use before the trial with no process listed; a leftover "
                          "context may draw power: check nvidia-smi and reset the GPU state.",
    Flag.IDLE_BASELINE_STALE: "The device-idle reference is older than the configured age; it is "
                              "re-measured between trials, so check the drift across the study.",
    Flag.IDLE_BASELINE_DRIFTED: "Idle power moved beyond the threshold since the reference was taken "
                                "(other tenants, temperature); the above-idle figures are less certain.",
    Flag.POWER_OUT_OF_RANGE: "Mean power was below idle or above 1.1 x the power limit: the meter or the "
                             "device mapping is suspect; check which GPUs were metered.",
    Flag.COUNTER_INTEGRAL_DISAGREE: "The energy counter and the integral of sampled power differ by more "
                                    "than 5 % on a long window; check the driver and the sampler timeline.",
    Flag.SAMPLER_GAPS: "The power timeline has gaps (an overloaded host?); the energy figure is unaffected "
                       "but timeline-derived checks are weaker.",
    Flag.COUNTER_UNAVAILABLE: "No hardware energy counter on this device; energy is integrated from "
                              "sampled power, which misses short bursts: use longer windows.",
    Flag.ENERGY_UNAVAILABLE: "No energy meter works here (no NVML GPU, no readable RAPL); energy is null. "
                             "Run on a GPU machine or make /sys/class/powercap readable.",
    Flag.HIGH_CV: "Repeats of this configuration vary more than the target; add repeats "
                  "(repeats.max) or find the noise source.",
    Flag.THROUGHPUT_DOMINATED: "J/token spread comes from tokens/s noise (host-bound work), not from power; "
                               "more repeats tighten the mean, a faster host loop (e.g. a compiled decode) "
                               "removes it, and the energy above loaded idle repeats far tighter (to bound "
                               "that one, set repeats.metric: energy_above_loaded_idle_per_output_token_j).",
    Flag.SYNTHETIC_WEIGHTS: "Random weights of the real shape: energy matches real weights on GPU-bound work "
                            "(METHODOLOGY.md section 1); output length was forced.",
    Flag.THERMAL_GATE_TIMEOUT: "The GPU did not reach the reference temperature band before the timeout; "
                               "raise thermal_gate.timeout_s or widen band_c.",
    Flag.FAKE_DEVICE: "Energy came from a fake NVML device (testing): these numbers are not measurements.",
    Flag.NO_STEADY_WINDOW: "Served mode: fewer than 2B requests per pass (B = the smaller of max_num_seqs and concurrency), so "
                           "there is no steady window and the figures cover the whole window, ramp-up and tail "
                           "included; send at least 2B requests per pass (workload.prompts), better 4B or more.",
    Flag.LOW_BATCH_OCCUPANCY: "Served mode: the running batch averaged below 80 % of B in the steady window, so the "
                              "server did not run at its intended batch; raise concurrency or request_rate, check "
                              "KV-cache room, or set max_num_seqs to the batch it reaches.",
    Flag.SHORT_STEADY_WINDOW: "Served mode: the steady window is shorter than 100 energy-counter periods (10 s on "
                              "H100), so counter quantisation exceeds 1 %; send more requests per pass (4B or more) "
                              "or longer outputs.",
    Flag.HOST_CPU_BUSY: "A process of this trial (the engine's server or its scheduler, or joulebench's load "
                        "generator) kept one CPU core busy for 90 % or more of the window, so the run may wait on the "
                        "host rather than the GPU, and repeats vary with the host's load; see host_cpu.busiest, "
                        "then spread the work (more API-server processes, fewer streamed tokens) or use a faster host.",
    Flag.REWARM_DRIFT: "This repeat ran without a re-warm pass (warmup.rewarm_passes: 0) and the window's first pass "
                       "did not run where this configuration's earlier windows ran, so the configuration may not "
                       "have been warm when the window began; set measurement.warmup.rewarm_passes to 1 (the "
                       "default) or more, or treat this trial with care.",
}
_INFO = {Flag.SYNTHETIC_WEIGHTS}


@dataclass(frozen=True)
class QualityFlag:
    flag: Flag
    detail: str | None = None

    @property
    def code(self) -> str:
        return self.flag.value

    @property
    def advice(self) -> str:
        return self.flag.advice

    def to_dict(self) -> dict:
        return {"code": self.flag.value, "advice": self.flag.advice, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.flag.value}: {self.detail}" if self.detail else self.flag.value


def _f(x) -> str:
    return f"{x:.3g}"


def window_flags(window: "WindowMeasurement", timeline: "pd.DataFrame | None" = None, *,
                 counter_period_s: float | None = None,
                 device_idle: "IdleBaseline | None" = None,
                 power_limits_w: Mapping[str, float] | None = None,
                 temp_drift_c: float = 5.0,
                 idle_margin_rel: float = 0.2,
                 idle_margin_w: float = 10.0,
                 integral_min_window_s: float = 30.0,
                 integral_tolerance_rel: float = 0.05,
                 sampler_hz: float = 10.0,
                 gap_factor: float = 3.0,
                 throttle_mask: int | None = None) -> list[QualityFlag]:
    """Quality flags derived from one measured window and its timeline.

    The window's own flags (``window.flags``: COUNTER_UNAVAILABLE, ENERGY_UNAVAILABLE,
    FAKE_DEVICE) are not repeated here; a record carries ``window.flags + window_flags(...)``.

    * SHORT_WINDOW: duration < 100 counter periods (``counter_period_s``, default
      each device's period: 0.1 s for NVML).
    * THROTTLING: power-cap/thermal/slowdown bits in the timeline inside the window.
    * TEMPERATURE_DRIFT: |end - start| > ``temp_drift_c`` on any device.
    * POWER_OUT_OF_RANGE: a device's mean power < idle x (1 - margin) - ``idle_margin_w``
      or > 1.1 x its power limit.
    * COUNTER_INTEGRAL_DISAGREE: windows > ``integral_min_window_s`` where the integral of
      sampled instant power differs from the counter by more than ``integral_tolerance_rel``.
    * SAMPLER_GAPS: timeline gaps > ``gap_factor`` / ``sampler_hz`` inside the window.
    """
    from joulebench.devices.nvml import THROTTLE_MASK

    mask = THROTTLE_MASK if throttle_mask is None else throttle_mask
    gpus = [d for d in window.devices if d.info.kind == "gpu"]
    found = [_short_window(window, counter_period_s),
             _temperature_drift(gpus, temp_drift_c),
             _power_out_of_range(window, gpus, device_idle, power_limits_w, idle_margin_rel, idle_margin_w)]
    if timeline is not None and len(timeline) > 0 and "device_uuid" in getattr(timeline, "columns", ()):
        tl = timeline[(timeline["t_s"] >= window.start_time_s) & (timeline["t_s"] <= window.end_time_s)]
        found += [_throttling(tl, mask),
                  _sampler_gaps(window, tl, gap_factor / sampler_hz),
                  _counter_integral_disagree(window, gpus, tl, integral_min_window_s, integral_tolerance_rel)]
    return [f for f in found if f is not None]


def _short_window(window: "WindowMeasurement", counter_period_s: float | None) -> QualityFlag | None:
    periods = [counter_period_s] if counter_period_s is not None else \
        [d.info.counter_period_s for d in window.devices if d.energy_j is not None and d.info.counter_period_s]
    if periods and window.energy_j is not None:
        period = max(periods)
        if window.duration_s < 100 * period:
            return QualityFlag(Flag.SHORT_WINDOW, f"{window.duration_s:.2f} s < 100 x {period:g} s counter period")
    return None


def _temperature_drift(gpus: list, temp_drift_c: float) -> QualityFlag | None:
    drift = []
    for d in gpus:
        if d.start_temperature_c is not None and d.end_temperature_c is not None:
            delta = d.end_temperature_c - d.start_temperature_c
            if abs(delta) > temp_drift_c:
                drift.append(f"GPU {d.info.index}: {d.start_temperature_c:g} -> {d.end_temperature_c:g} C")
    if drift:
        return QualityFlag(Flag.TEMPERATURE_DRIFT, "; ".join(drift) + f" (bound {temp_drift_c:g} C)")
    return None


def _power_out_of_range(window: "WindowMeasurement", gpus: list, device_idle: "IdleBaseline | None",
                        power_limits_w: Mapping[str, float] | None, idle_margin_rel: float,
                        idle_margin_w: float) -> QualityFlag | None:
    limits = dict(power_limits_w or {})
    out_of_range = []
    for d in gpus:
        if d.energy_j is None or window.duration_s <= 0:
            continue
        mean_w = d.energy_j / window.duration_s
        limit = limits.get(d.info.uuid, d.info.power_limit_w)
        idle_w = device_idle.per_device_w.get(d.info.uuid) if device_idle is not None else None
        if limit is not None and mean_w > 1.1 * limit:
            out_of_range.append(f"GPU {d.info.index}: {_f(mean_w)} W > 1.1 x limit {_f(limit)} W")
        if idle_w is not None and mean_w < idle_w * (1 - idle_margin_rel) - idle_margin_w:
            out_of_range.append(f"GPU {d.info.index}: {_f(mean_w)} W below idle {_f(idle_w)} W")
    if out_of_range:
        return QualityFlag(Flag.POWER_OUT_OF_RANGE, "; ".join(out_of_range))
    return None


def _throttling(tl: "pd.DataFrame", mask: int) -> QualityFlag | None:
    from joulebench.devices.nvml import THROTTLE_NAMES

    if "throttle_reasons" not in tl.columns:
        return None
    seen = {}
    for uuid, bits in zip(tl["device_uuid"], tl["throttle_reasons"]):
        if bits is None or (isinstance(bits, float) and math.isnan(bits)):
            continue
        hit = int(bits) & mask
        if hit:
            seen[uuid] = seen.get(uuid, 0) | hit
    if not seen:
        return None
    parts = []
    for uuid, bits in seen.items():
        names = [n for b, n in THROTTLE_NAMES.items() if bits & b]
        n = int(((tl["device_uuid"] == uuid) & (tl["throttle_reasons"].fillna(0).astype(int) & mask > 0)).sum())
        parts.append(f"{uuid}: {','.join(names)} in {n} samples")
    return QualityFlag(Flag.THROTTLING, "; ".join(parts))


def _sampler_gaps(window: "WindowMeasurement", tl: "pd.DataFrame", gap_s: float) -> QualityFlag | None:
    """Per device, inside the window, including its two ends."""
    gaps = []
    for d in window.devices:
        t = sorted(tl.loc[tl["device_uuid"] == d.info.uuid, "t_s"].tolist())
        if d.info.kind != "gpu" and not t:
            continue
        edges = [window.start_time_s] + t + [window.end_time_s]
        worst = max(b - a for a, b in zip(edges, edges[1:]))
        if worst > gap_s:
            gaps.append(f"{d.info.uuid}: longest gap {worst:.2f} s")
    if gaps:
        return QualityFlag(Flag.SAMPLER_GAPS, "; ".join(gaps) + f" (> {gap_s:.2f} s)")
    return None


def _counter_integral_disagree(window: "WindowMeasurement", gpus: list, tl: "pd.DataFrame",
                               integral_min_window_s: float, integral_tolerance_rel: float) -> QualityFlag | None:
    """Counter vs power integral, long windows only."""
    if window.duration_s <= integral_min_window_s:
        return None
    bad = []
    for d in gpus:
        if d.energy_j is None or d.source != "nvml-counter":
            continue
        integral = power_integral_j(tl[tl["device_uuid"] == d.info.uuid], window.start_time_s, window.end_time_s)
        if integral is None or d.energy_j <= 0:
            continue
        rel = abs(integral - d.energy_j) / d.energy_j
        if rel > integral_tolerance_rel:
            bad.append(f"GPU {d.info.index}: counter {d.energy_j:.1f} J vs integral {integral:.1f} J ({rel:.1%})")
    if bad:
        return QualityFlag(Flag.COUNTER_INTEGRAL_DISAGREE, "; ".join(bad))
    return None


def power_integral_j(rows: "pd.DataFrame", start_s: float, end_s: float, column: str | None = None) -> float | None:
    """Trapezoid-free (zero-order hold) integral of sampled power over [start, end] (J).

    Uses ``power_instant_w`` where present, else ``power_w``. Each sample holds
    until the next one; the first sample is held back to ``start_s``.
    """
    if rows is None or len(rows) == 0:
        return None
    col = column
    if col is None:
        col = "power_instant_w" if "power_instant_w" in rows.columns and rows["power_instant_w"].notna().any() \
            else "power_w"
    sel = rows[["t_s", col]].dropna().sort_values("t_s")
    if len(sel) == 0:
        return None
    t = sel["t_s"].to_numpy(dtype=float)
    p = sel[col].to_numpy(dtype=float)
    total = 0.0
    for i in range(len(t)):
        a = max(start_s, t[i]) if i > 0 else start_s
        b = min(end_s, t[i + 1]) if i + 1 < len(t) else end_s
        if b > a:
            total += p[i] * (b - a)
    return total


def steady_window_flags(steady: Mapping | None, *, counter_period_s: float | None,
                        occupancy_min: float = 0.8) -> list[QualityFlag]:
    """Flags of a served trial's steady window (``SteadyMarks.summary()``): none, low occupancy, short."""
    if not steady:
        return []
    batch = steady.get("batch")
    if not steady.get("segments") or not steady.get("duration_s"):
        return [QualityFlag(Flag.NO_STEADY_WINDOW, f"{steady.get('requests_per_pass')} requests per pass, B = {batch}")]
    out = []
    occ = steady.get("running_batch_mean")
    if batch and occ is not None and occ < occupancy_min * batch:
        out.append(QualityFlag(Flag.LOW_BATCH_OCCUPANCY,
                               f"running batch {occ:.2f} < {occupancy_min:.0%} of B = {batch}"))
    per_segment_s = steady["duration_s"] / steady["segments"]
    if counter_period_s and per_segment_s < 100 * counter_period_s:
        out.append(QualityFlag(Flag.SHORT_STEADY_WINDOW,
                               f"{per_segment_s:.2f} s per pass < 100 x {counter_period_s:g} s counter period"))
    return out


def host_cpu_flags(host_cpu: Mapping | None, *, busy_share: float = 0.9) -> list[QualityFlag]:
    """``host_cpu_busy`` when a process of the trial's tree used a core for ``busy_share`` of the window or more."""
    busiest = (host_cpu or {}).get("busiest") or []
    hot = [b for b in busiest if b.get("cpu_share", 0.0) >= busy_share]
    if not hot:
        return []
    return [QualityFlag(Flag.HOST_CPU_BUSY, ", ".join(
        f"{b['name']} (pid {b['pid']}{', ' + b['role'] if b.get('role') else ''}) {b['cpu_share']:.0%} of a core"
        for b in hot))]


def flags_to_dicts(flags: Iterable[QualityFlag]) -> list[dict]:
    return [f.to_dict() for f in flags]
