"""One trial's protocol (METHODOLOGY.md section 3), read top to bottom:

    pre-flight -> warm-up until stable -> thermal gate -> measured window
    (sampler process + counters at the window edges, workload repeated until the
    minimum window is reached) -> record, written atomically

:func:`run_trial` drives the steps against an :class:`~joulebench.worker.session.ExperimentSession`
(the loaded model, the devices, this worker's warm-up history); the steps themselves take
what they need as arguments. The record is built by worker/record.py.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joulebench.backends.base import Backend, RequestResult
from joulebench.backends.served.loadgen import STEADY_DEFINITION
from joulebench.config.study import MeasurementConfig, ThermalGateConfig, WarmupConfig
from joulebench.meters.flags import Flag, QualityFlag, host_cpu_flags, steady_window_flags
from joulebench.meters.window import WindowMeasurement
from joulebench.spec import Phase, TrialSpec
from joulebench.worker.record import TrialMeasurement, trial_record, unused_device_rows
from joulebench.workloads import build_requests
from joulebench.testing.faults import inject_fault

if TYPE_CHECKING:
    from joulebench.worker.session import ExperimentSession


@dataclass
class WarmState:
    """What this worker remembers of its warm-ups across trials and rounds."""
    history: dict[str, list[float]] = field(default_factory=dict)   # config id -> pass throughputs (tokens/s)
    converged: set[str] = field(default_factory=set)                # configurations warmed to stability
    noise_floor_cvs: list[float] = field(default_factory=list)      # steady-state pass-to-pass CVs (plateaus)
    window_passes: dict[str, list[float]] = field(default_factory=dict)  # config id -> its windows' pass tokens/s


@dataclass
class WindowOutcome:
    """The measured window's raw results."""
    window: WindowMeasurement                 # the used GPUs (the CPU domains when no GPU is metered)
    cpu_window: WindowMeasurement | None      # the CPU domains
    unused_window: WindowMeasurement | None   # the visible GPUs the trial does not use
    results: list[RequestResult]
    passes: int
    steady: dict[str, Any] | None    # served mode: SteadyMarks.summary()
    timeline: Any                    # the sampler's timeline (or None)
    clock_offset_s: float = 0.0      # time.time() - time.perf_counter() in this process (timeline vs token clocks)
    host_cpu: dict[str, Any] | None = None   # CPU used by this worker's process tree over the window (system/proc.py)
    pass_throughputs_tok_s: list[float] = field(default_factory=list)   # output tokens / duration of each pass


def run_trial(session: ExperimentSession, trial: TrialSpec) -> dict[str, Any]:
    """Run one trial on the session's loaded model; write and return its record."""
    spec, m, backend, devices = session.spec, session.m, session.backend, session.devices
    tid, params = trial.trial_id, trial.params
    started_at = time.time()
    requests = build_requests(params, backend.tokenizer, base_dir=Path(spec.base_dir or "."))

    session.phase(Phase.PREFLIGHT, tid)
    pre, flags = preflight_step(devices, m, session.own_pids())
    session.phase(Phase.WARMUP, tid)
    warmup, warm_flags = warm_up(backend, requests, params, trial.config_id, m.warmup, session.warm)
    flags += warm_flags
    thermal: dict[str, Any] = {}
    if devices:
        session.phase(Phase.THERMAL, tid)
        thermal, thermal_flags = thermal_step(devices, m.thermal_gate, spec.thermal_reference_c)
        flags += thermal_flags
    session.phase(Phase.WINDOW, tid)
    inject_fault(tid)
    w = measure_window(session, requests, params)
    flags += rewarm_window_check(warmup, w.pass_throughputs_tok_s, trial.config_id, m.warmup, session.warm)
    ts_rel = None
    if w.timeline is not None and len(w.timeline):
        from joulebench.meters.sampler import write_timeseries

        ts_rel = f"timeseries/{tid}.parquet"
        write_timeseries(w.timeline, session.out.root / ts_rel)
    req_rel = None
    if params.get("mode") == "served" and w.results:
        from joulebench.results.requests import requests_trace_path, write_requests_trace

        req_rel = requests_trace_path(tid)
        write_requests_trace(w.results, session.out.root / req_rel, clock_offset_s=w.clock_offset_s,
                             window_start_s=w.window.start_time_s, window_end_s=w.window.end_time_s,
                             window_energy_j=w.window.energy_j, device_uuids=[d.info.uuid for d in w.window.devices])
    flags += window_quality_flags(session, w, params["model"])
    flags += steady_window_flags(w.steady, counter_period_s=session.m.counter_period_s if session.devices else None)
    if session.devices:      # on a CPU-only run the CPU is the device: busy is the point, not a warning
        flags += host_cpu_flags(w.host_cpu)
    measured = TrialMeasurement(
        window=w.window, cpu_window=w.cpu_window, results=w.results, passes=w.passes,
        device_uuids=[d.info.uuid for d in devices], started_at=started_at, finished_at=time.time(),
        peak_memory_bytes=backend.peak_memory_bytes(),
        nvml_memory_used_bytes=sum((d.memory_used_bytes() or 0) for d in devices) or None,
        timeseries=ts_rel, requests_trace=req_rel, host_cpu=w.host_cpu, steady=w.steady, warmup=warmup, thermal=thermal, preflight=pre, flags=flags,
        per_request_energy=request_energy(w, params), device_stats=device_stats(w))
    rec = trial_record(spec, trial, session.facts(), measured)
    if session.unused_devs and w.unused_window is not None:
        rec["unused_devices"] = unused_device_rows(w.unused_window)
    session.out.write_record(rec)
    return rec


def preflight_step(devices: list, m: MeasurementConfig, own_pids: set[int]) -> tuple[dict, list[QualityFlag]]:
    """The devices' state before the trial (foreign processes, clocks, ...) and its flags."""
    from joulebench.meters.preflight import preflight, preflight_flags

    pre = preflight(devices, allow_foreign=bool(m.allow_foreign_processes), own_pids=own_pids) if devices else {}
    return pre, (preflight_flags(pre) if pre else [])


def warm_up(backend: Backend, requests: list, params: dict[str, Any], config_id: str,
                    wcfg: WarmupConfig, state: WarmState) -> tuple[dict[str, Any], list[QualityFlag]]:
    """Warm up until throughput is stable (meters/warmup.py: cv, plateau, noise-floor, earlier). A
    configuration this worker warmed to stability in an earlier round only pays for the switch back."""
    from joulebench.meters.warmup import cv_of, warmup_step

    history = list(state.history.get(config_id, []))
    warmed_before = config_id in state.converged
    floor = statistics.median(state.noise_floor_cvs) if state.noise_floor_cvs else None
    if warmed_before and history and wcfg.rewarm_passes == 0:
        # no re-warm pass: the window starts at once and its first pass is checked (rewarm_window_check)
        return {"passes": 0, "converged": True, "converged_by": "earlier", "duration_s": 0.0,
                "cv": cv_of(history[-wcfg.k:]), "throughputs_tok_s": [], "requests_per_pass": 0,
                "noise_floor_cv": None, "rewarm": True, "skipped": True}, []
    throughputs: list[float] = []
    warm_requests = warmup_requests(backend, requests, params, wcfg)
    w_start = time.perf_counter()
    st = warmup_step([])
    while len(throughputs) < wcfg.max_passes:
        t0 = time.perf_counter()
        res = backend.generate(warm_requests, params)
        backend.synchronize()
        dt = time.perf_counter() - t0
        throughputs.append(sum(r.output_tokens for r in res) / dt if dt > 0 else 0.0)
        st = warmup_step(throughputs, history=history, k=wcfg.k, cv_target=wcfg.cv_target, plateau=wcfg.plateau,
                         min_passes=wcfg.min_passes, warmed_before=warmed_before,
                         rewarm_passes=wcfg.rewarm_passes, noise_floor_cv=floor)
        if st.converged or time.perf_counter() - w_start > wcfg.max_s:
            break
    converged, wcv, how = st.converged, st.cv, st.how
    flags = []
    if wcfg.max_passes > 0 and not converged:
        flags.append(QualityFlag(Flag.WARMUP_NOT_CONVERGED,
                                 f"{len(throughputs)} passes, last-{wcfg.k} CV "
                                 f"{'n/a' if wcv is None else f'{wcv:.3f}'}"))
    state.history[config_id] = recent = (history + throughputs)[-2 * wcfg.k:]
    if converged:
        state.converged.add(config_id)
    if how == "plateau":      # steady-state pass-to-pass noise of this host and worker
        c = cv_of(recent)
        if c is not None:
            state.noise_floor_cvs.append(c)
    return {"passes": len(throughputs), "converged": converged, "converged_by": how,
            "duration_s": time.perf_counter() - w_start,
            "cv": wcv, "throughputs_tok_s": throughputs, "requests_per_pass": len(warm_requests),
            "noise_floor_cv": floor if how == "noise-floor" else None,
            "rewarm": bool(history)}, flags


def rewarm_window_check(warmup: dict[str, Any], pass_tok_s: list[float], config_id: str, wcfg: WarmupConfig,
                        state: WarmState) -> list[QualityFlag]:
    """Remember this window's pass throughputs for the configuration; a repeat that skipped its re-warm pass
    (``rewarm_passes: 0``) has its first pass held to the earlier windows' passes (meters/warmup.rewarm_check).
    The result goes into the warm-up block: ``first_pass_rel_diff``, ``first_pass_agrees``."""
    from joulebench.meters.warmup import rewarm_check

    earlier = list(state.window_passes.get(config_id, []))
    state.window_passes[config_id] = (earlier + list(pass_tok_s))[-4 * wcfg.k:]
    if not warmup.get("skipped") or not pass_tok_s:
        return []
    agrees, rel = rewarm_check(pass_tok_s[0], earlier, cv_target=wcfg.cv_target)
    warmup["first_pass_rel_diff"], warmup["first_pass_agrees"] = rel, agrees
    if agrees:
        return []
    return [QualityFlag(Flag.REWARM_DRIFT, f"first pass {pass_tok_s[0]:.1f} tok/s, {rel:+.1%} from this "
                                           f"configuration's {len(earlier)} earlier window passes")]


def warmup_requests(backend: Backend, requests: list, params: dict[str, Any], wcfg: WarmupConfig) -> list:
    """What one warm-up pass sends. Served mode: ``wcfg.served_batches`` running batches picked evenly through
    the workload (the server is up and compiled; a whole-workload pass per trial would cost as much as the
    window). Otherwise the backend's choice (one static batch, or the whole workload)."""
    if params.get("mode") != "served":
        return backend.warmup_requests(requests, params)
    from joulebench.backends.served.loadgen import running_cap, warmup_subset

    running = running_cap(len(requests), max_num_seqs=params.get("max_num_seqs"),
                          concurrency=params.get("concurrency"))
    return warmup_subset(requests, running, wcfg.served_batches)


def thermal_step(devices: list, gate: ThermalGateConfig | None,
                 reference_c: float | None) -> tuple[dict[str, Any], list[QualityFlag]]:
    """Thermal state: record, and optionally wait to be near the study's reference."""
    from joulebench.meters.thermal import thermal_gate

    tr = thermal_gate(devices, reference_c=reference_c, band_c=gate.band_c if gate else math.inf,
                      timeout_s=gate.timeout_s if gate else 0.0)
    flags = []
    if tr.timed_out:
        flags.append(QualityFlag(Flag.THERMAL_GATE_TIMEOUT,
                                 f"{tr.start_temperature_c} C vs reference {tr.reference_c} C"))
    return {"start_temperature_c": tr.start_temperature_c, "reference_c": tr.reference_c,
            "waited_s": tr.waited_s, "within_band": tr.within_band, "timed_out": tr.timed_out,
            "gated": gate is not None}, flags


def measure_window(session: ExperimentSession, requests: list, params: dict[str, Any]) -> WindowOutcome:
    """The measured window: whole passes until the minimum window is reached."""
    from joulebench.meters.window import EnergyWindow

    backend = session.backend
    backend.reset_peak_memory()
    sampler = session.sampler_process()
    if sampler is not None:
        sampler.begin()
    results: list[RequestResult] = []
    pass_tok_s: list[float] = []
    passes = 0
    steady = None
    if params.get("mode") == "served":
        steady = SteadyMarks(session.devices)   # counters read live at the steady state's edges
        backend.steady_state_hooks = (steady.on_start, steady.on_end)
    from joulebench.system.proc import cpu_times, cpu_usage

    pids = session.own_pids()            # read outside the window's edges (a /proc walk)
    cpu_before = cpu_times(pids)
    try:
        with EnergyWindow(session.devices, sync=backend.synchronize) as w, \
                EnergyWindow(session.cpu_devs) as wcpu, EnergyWindow(session.unused_devs) as wunused:
            t_end = time.perf_counter() + float(session.m.min_window_s)
            while True:
                t_pass = time.perf_counter()
                res = backend.generate(requests, params)
                dt = time.perf_counter() - t_pass
                results.extend(res)
                pass_tok_s.append(sum(r.output_tokens for r in res) / dt if dt > 0 else 0.0)
                passes += 1
                if steady is not None:
                    steady.close_pass(getattr(backend, "steady_state", None), getattr(backend, "steady_batch", None),
                                      len(requests))
                if time.perf_counter() >= t_end:
                    break
    finally:
        timeline = sampler.end() if sampler is not None else None
    host_cpu = cpu_usage(cpu_before, cpu_times(pids | session.own_pids()), w.result.duration_s,
                         roles=process_roles(session, params))
    return WindowOutcome(window=w.result, cpu_window=wcpu.result, unused_window=wunused.result, results=results,
                         passes=passes, steady=steady.summary() if steady is not None else None,
                         timeline=timeline, clock_offset_s=time.time() - time.perf_counter(), host_cpu=host_cpu,
                         pass_throughputs_tok_s=pass_tok_s)


def device_stats(w: WindowOutcome) -> dict[str, dict[str, Any]]:
    """What the sampler's timeline says of each device over the window (clocks, utilisation, power cap)."""
    from joulebench.meters.sampler import device_window_stats

    return device_window_stats(w.timeline, w.window.start_time_s, w.window.end_time_s)


def process_roles(session: ExperimentSession, params: dict[str, Any]) -> dict[int, str]:
    """What the known processes of the worker's tree are, for ``host_cpu``."""
    roles = {os.getpid(): "joulebench worker (load generator)" if params.get("mode") == "served"
             else "joulebench worker (engine)"}
    notes = getattr(session.load_info, "notes", None) or {}
    if isinstance(notes.get("server_pid"), int):
        roles[notes["server_pid"]] = "engine server"
    sampler_pid = getattr(session.sampler, "pid", None)
    if isinstance(sampler_pid, int):
        roles[sampler_pid] = "joulebench sampler"
    return roles


def request_energy(w: WindowOutcome, params: dict[str, Any]) -> dict[str, Any] | None:
    """Served mode: the window's energy attributed to its requests (analysis/attribution.py)."""
    from joulebench.analysis.attribution import window_request_energy

    if params.get("mode") != "served" or w.window.energy_j is None or not w.results:
        return None
    block = window_request_energy(w.results, w.timeline, [d.info.uuid for d in w.window.devices],
                                  w.window.start_time_s, w.window.end_time_s, w.window.energy_j,
                                  clock_offset_s=w.clock_offset_s)
    return block.model_dump(mode="json") if block is not None else None


def window_quality_flags(session: ExperimentSession, w: WindowOutcome, model: str) -> list[QualityFlag]:
    """Flags from the window and the timeline, the load, and the host's idle reference."""
    from joulebench.meters.flags import window_flags

    flags: list[QualityFlag] = []
    if session.devices:
        limits = {d.info.uuid: d.info.power_limit_w for d in session.devices}
        flags.extend(window_flags(w.window, w.timeline, counter_period_s=session.m.counter_period_s,
                                  device_idle=session.device_idle(), power_limits_w=limits))
    flags.extend(w.window.flags)  # the window's own (counter unavailable, no meter at all, ...)
    if session.load_info and session.load_info.synthetic_weights:
        flags.append(QualityFlag(Flag.SYNTHETIC_WEIGHTS, model))
    flags.extend(QualityFlag(Flag(code), None) for code in session.spec.device_idle_flags)
    return flags


class SteadyMarks:
    """Energy counters read live when a served pass enters and leaves its steady state."""

    def __init__(self, devices):
        self.devices = devices
        self._start = self._end = None
        self.segments: list[dict[str, Any]] = []
        self.passes = 0
        self.batch: int | None = None
        self.requests_per_pass: int | None = None

    def _read(self, t: float):
        try:
            counters = [d.energy_counter_j() for d in self.devices]
        except Exception:  # noqa: BLE001 - a failed read leaves the segment without energy
            counters = [None]
        return t, counters

    def on_start(self, t: float) -> None:
        self._start = self._read(t)

    def on_end(self, t: float) -> None:
        self._end = self._read(t)

    def close_pass(self, state, batch: int | None = None, requests: int | None = None) -> None:
        """One pass done: keep its steady segment (``state``: loadgen.SteadyState, None when it had none)."""
        s, e = self._start, self._end
        self._start = self._end = None
        self.passes += 1
        self.batch = batch if batch is not None else getattr(state, "batch", None) or self.batch
        self.requests_per_pass = requests
        if state is None or s is None or e is None or e[0] <= s[0]:
            return
        energy = None
        if self.devices and all(x is not None for x in s[1] + e[1]):
            energy = sum(b - a for a, b in zip(s[1], e[1]))
        self.segments.append({"duration_s": e[0] - s[0], "energy_j": energy,
                              "output_tokens": int(state.output_tokens),
                              "running_batch_mean": state.running_batch_mean})

    def summary(self) -> dict[str, Any] | None:
        """The steady window over all passes (sums of the per-pass segments); ``segments: 0`` when no pass
        had one (then the record's figures fall back to the whole window, flagged)."""
        if not self.passes:
            return None
        energies = [g["energy_j"] for g in self.segments]
        duration = sum(g["duration_s"] for g in self.segments)
        occ = [(g["running_batch_mean"], g["duration_s"]) for g in self.segments if g["running_batch_mean"] is not None]
        return {"segments": len(self.segments), "passes": self.passes,
                "duration_s": duration,
                "energy_j": sum(energies) if energies and all(x is not None for x in energies) else None,
                "output_tokens": sum(g["output_tokens"] for g in self.segments),
                "batch": self.batch, "requests_per_pass": self.requests_per_pass,
                "running_batch_mean": (sum(o * d for o, d in occ) / sum(d for _, d in occ)
                                       if occ and sum(d for _, d in occ) > 0 else None),
                "definition": STEADY_DEFINITION + ", per pass"}
