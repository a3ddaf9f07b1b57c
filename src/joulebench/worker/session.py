"""One experiment's measurement protocol, read top to bottom (METHODOLOGY.md section 3).

An experiment is a list of trials of one load group, served by one worker with one
model load:

    pre-flight -> load (timed, metered) -> loaded-idle reference
    for each trial:
        pre-flight -> warm-up until stable -> thermal gate -> measured window
        (sampler process + counters at the window edges, workload repeated until the
        minimum window is reached) -> record, written atomically

A worker may serve later experiments of the same load group (the next rounds) with
the model it already holds (``continue_with``): no reload, the loaded-idle reference
re-measured only when older than ``baseline_max_age_s``, one sampler process for all
windows, and warm-up that judges stability over this worker's earlier passes of the
same configuration too (a configuration already stable needs ``warmup.rewarm_passes``
new passes, not a full warm-up, unless the new passes disagree with the old).

The device-idle reference is measured by the orchestrator on the host, before any
worker holds a context, and arrives in the experiment spec.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from joulebench.backends import get_backend_class
from joulebench.backends.base import Backend, RequestResult
from joulebench.config.device import DeviceSpec
from joulebench.system.snapshot import collect_environment
from joulebench.meters.flags import Flag, QualityFlag
from joulebench.models import parse_model
from joulebench.results.schema import SCHEMA_VERSION, TrialRecord
from joulebench.results.store import StudyStore
from joulebench.testing.faults import inject_fault
from joulebench.workloads import build_requests

Emit = Callable[[dict[str, Any]], None]


def percentile_stats(values: list[float]) -> dict[str, Any] | None:
    import numpy as np

    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    a = np.asarray(xs, dtype=float)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def analytic_flops(model_config: dict[str, Any], results: list[RequestResult]) -> tuple[float | None, str]:
    """2 x non-embedding parameters x tokens + attention over the context + the LM head.

    Per request with P prompt and O output tokens: 2*N*(P+O) + 4*L*d_attn*sum(context lengths)
    + 2*h*V*O, where the context of the t-th processed token is t (causal attention).
    """
    formula = "2*N_nonemb*(P+O) + 4*L*d_attn*sum_t(t) + 2*h*V*O"
    c = model_config or {}
    try:
        h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
        heads = c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or heads
        hd = c.get("head_dim") or h // heads
        vocab = c["vocab_size"]
    except (KeyError, TypeError):
        return None, formula
    per_layer = h * heads * hd * 2 + 2 * h * kv * hd + 3 * h * i
    n_nonemb = layers * per_layer
    d_attn = heads * hd
    total = 0.0
    for r in results:
        p, o = r.input_tokens, r.output_tokens
        n = p + o
        total += 2.0 * n_nonemb * n + 4.0 * layers * d_attn * (n * (n + 1) / 2) + 2.0 * h * vocab * o
    return total, formula


class ExperimentSession:
    """Runs the trials of one experiment spec inside this (worker) process."""

    def __init__(self, spec: dict[str, Any], out_dir: Path, emit: Emit):
        self.spec = spec
        self.out = StudyStore(out_dir)
        self.out.create()
        self.emit = emit
        self.m = spec["measurement"]
        self.backend: Backend | None = None
        self.devices: list = []
        self.cpu_devs: list = []
        self.unused_devs: list = []
        self.loaded_idle = None
        self.load_info = None
        self.load_energy_j = None
        self.env = None
        self.own_pids = {os.getpid()}
        self.worker_id = spec["experiment_id"]      # the experiment that started (and loaded) this worker
        self.sampler = None                         # one sampler process for all windows of this worker
        self.warm_history: dict[str, list[float]] = {}   # config id -> warm-up pass throughputs (tokens/s)
        self.warm_converged: set[str] = set()            # configurations this worker warmed to stability
        self.noise_floor_cvs: list[float] = []           # steady-state pass-to-pass CVs seen (plateaus)
        self.load_identity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ experiment
    def run(self) -> int:
        """The worker's first experiment: load the model, then run its trials. 3: the load failed."""
        trials = self.spec["trials"]
        self.emit({"event": "experiment_start", "experiment_id": self.spec["experiment_id"],
                   "worker_id": self.worker_id})
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - a load failure fails every trial of the experiment
            err = f"{type(e).__name__}: {e}"
            for t in trials:
                self._write_failed(t, err, "error", tb=traceback.format_exc())
            self.emit({"event": "experiment_end", "experiment_id": self.spec["experiment_id"], "error": err})
            return 3
        self._run_trials(trials)
        self.emit({"event": "experiment_end", "experiment_id": self.spec["experiment_id"]})
        return 0

    def continue_with(self, spec: dict[str, Any]) -> None:
        """A later experiment of the same load group, served with the model already loaded."""
        self.spec = spec
        self.m = spec["measurement"]
        eid = spec["experiment_id"]
        self.emit({"event": "experiment_start", "experiment_id": eid, "worker_id": self.worker_id,
                   "reused": True})
        problem = None
        wanted = load_identity(spec)
        if self.backend is None:
            problem = "this worker holds no loaded model"
        elif wanted != self.load_identity:
            problem = f"this worker's model was loaded with {self.load_identity}, the experiment needs {wanted}"
        if problem:
            for t in spec["trials"]:
                self._write_failed(t, f"cannot reuse worker {self.worker_id}: {problem}", "error")
            self.emit({"event": "experiment_end", "experiment_id": eid, "error": problem})
            return
        try:
            self._refresh_loaded_idle()
        except Exception as e:  # noqa: BLE001 - keep the old reference; the records say when it was measured
            self._phase("loaded_idle", None, error=f"{type(e).__name__}: {e}")
        self._run_trials(spec["trials"])
        self.emit({"event": "experiment_end", "experiment_id": eid})

    def _run_trials(self, trials: list[dict[str, Any]]) -> None:
        for t in trials:
            self.emit({"event": "trial_start", "trial_id": t["trial_id"]})
            try:
                rec = self._run_trial(t)
            except Exception as e:  # noqa: BLE001 - one trial's failure is recorded, the rest go on
                rec = self._write_failed(t, f"{type(e).__name__}: {e}", "error", tb=traceback.format_exc())
            self.emit({"event": "trial_end", "trial_id": t["trial_id"], "status": rec["status"]})

    def _refresh_loaded_idle(self) -> None:
        """Re-measure the loaded-idle reference of a long-lived worker once it is older than allowed."""
        if self.loaded_idle is None or not self.devices or self.m.get("loaded_idle_s", 0) <= 0:
            return
        if time.time() - self.loaded_idle.measured_at <= float(self.m.get("baseline_max_age_s", 3600.0)):
            return
        self._measure_loaded_idle()

    def _measure_loaded_idle(self) -> None:
        from joulebench.meters.baselines import measure_idle_power

        self._phase("loaded_idle")
        self.loaded_idle = measure_idle_power(self.devices, self.m["loaded_idle_s"], sync=self.backend.synchronize)

    def _phase(self, phase: str, trial_id: str | None = None, **extra) -> None:
        self.emit({"event": "phase", "phase": phase, "trial_id": trial_id, **extra})

    def _load(self) -> None:
        from joulebench.devices import cpu_devices, resolve_gpus
        from joulebench.meters.window import EnergyWindow

        first = self.spec["trials"][0]["params"]
        backend_cls = get_backend_class(first["backend"])
        engine = {k: v for k, v in first.items() if k in backend_cls.Params.model_fields}
        # A container numbers its passed GPUs from 0: its runner says so in ``worker_device``.
        device = DeviceSpec.parse(self.spec["worker_device"]) if self.spec.get("worker_device") \
            else DeviceSpec.of(first)
        options = {"device": str(device),
                   "trust_remote_code": self.spec.get("trust_remote_code", False),
                   "seed": self.spec.get("seed", 0), "weights_seed": 0}
        self.backend = backend_cls(backend_cls.Params.model_validate(engine), options)
        self.load_identity = load_identity(self.spec)
        self.env = collect_environment()
        model = parse_model(first["model"])
        resolved = device.resolve()
        intended, self.devices = list(resolved.ordinals), resolved.devices
        self.cpu_devs = cpu_devices()
        self._phase("load")
        with EnergyWindow(self.devices + self.cpu_devs) as w:
            self.load_info = self.backend.load(model)
        self.load_energy_j = w.result.energy_j if w.result else None
        # The devices that really hold the model (a backend may spread over several GPUs).
        used = self.backend.cuda_device_indices()
        if used and sorted(used) != sorted(intended or []):
            self.devices = resolve_gpus(used)
        mine = {d.info.uuid for d in self.devices}
        try:  # visible GPUs this trial does not use: reported apart, never summed
            self.unused_devs = [g for g in resolve_gpus(None) if g.info.uuid not in mine] if self.devices else []
        except Exception:  # noqa: BLE001
            self.unused_devs = []
        if self.m.get("loaded_idle_s", 0) > 0 and self.devices:
            self._measure_loaded_idle()

    def close(self) -> None:
        if self.sampler is not None:
            try:
                self.sampler.close()
            except Exception:  # noqa: BLE001
                pass
            self.sampler = None
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ trial
    def _run_trial(self, trial: dict[str, Any]) -> dict[str, Any]:
        from joulebench.meters.preflight import preflight
        from joulebench.meters.thermal import thermal_gate
        from joulebench.meters.warmup import cv_of, warmup_step
        from joulebench.meters.window import EnergyWindow

        tid, params = trial["trial_id"], trial["params"]
        backend = self.backend
        started_at = time.time()
        flags: list[QualityFlag] = []
        base_dir = Path(self.spec.get("base_dir") or ".")
        requests = build_requests(params, backend.tokenizer, base_dir=base_dir)

        self._phase("preflight", tid)
        pre = preflight(self.devices, allow_foreign=bool(self.m.get("allow_foreign_processes")),
                        own_pids=self._own_pids()) if self.devices else {}
        if pre:
            from joulebench.meters.preflight import preflight_flags

            flags.extend(preflight_flags(pre))

        # Warm-up until throughput is stable (meters/warmup.py: cv, plateau, noise-floor, earlier). A
        # configuration this worker warmed to stability in an earlier round only pays for the switch back.
        self._phase("warmup", tid)
        wcfg = self.m["warmup"]
        cid = trial["config_id"]
        history = list(self.warm_history.get(cid, []))
        warmed_before = cid in self.warm_converged
        floor = statistics.median(self.noise_floor_cvs) if self.noise_floor_cvs else None
        throughputs: list[float] = []
        warm_requests = backend.warmup_requests(requests, params)
        w_start = time.perf_counter()
        st = warmup_step([])
        while len(throughputs) < wcfg["max_passes"]:
            t0 = time.perf_counter()
            res = backend.generate(warm_requests, params)
            backend.synchronize()
            dt = time.perf_counter() - t0
            throughputs.append(sum(r.output_tokens for r in res) / dt if dt > 0 else 0.0)
            st = warmup_step(throughputs, history=history, k=wcfg["k"], cv_target=wcfg["cv_target"],
                             plateau=wcfg.get("plateau", True), min_passes=wcfg["min_passes"],
                             warmed_before=warmed_before, rewarm_passes=wcfg.get("rewarm_passes", 1),
                             noise_floor_cv=floor)
            if st.converged:
                break
            if time.perf_counter() - w_start > wcfg["max_s"]:
                break
        converged, wcv, how = st.converged, st.cv, st.how
        if wcfg["max_passes"] > 0 and not converged:
            flags.append(QualityFlag(Flag.WARMUP_NOT_CONVERGED,
                                     f"{len(throughputs)} passes, last-{wcfg['k']} CV "
                                     f"{'n/a' if wcv is None else f'{wcv:.3f}'}"))
        self.warm_history[cid] = recent = (history + throughputs)[-2 * wcfg["k"]:]
        if converged:
            self.warm_converged.add(cid)
        if how == "plateau":      # steady-state pass-to-pass noise of this host and worker
            c = cv_of(recent)
            if c is not None:
                self.noise_floor_cvs.append(c)
        warmup = {"passes": len(throughputs), "converged": converged, "converged_by": how,
                  "duration_s": time.perf_counter() - w_start,
                  "cv": wcv, "throughputs_tok_s": throughputs, "requests_per_pass": len(warm_requests),
                  "noise_floor_cv": floor if how == "noise-floor" else None,
                  "rewarm": bool(history)}

        # Thermal state: record, and optionally wait to be near the study's reference.
        thermal: dict[str, Any] = {}
        gate = self.m.get("thermal_gate")
        if self.devices:
            self._phase("thermal", tid)
            tr = thermal_gate(self.devices, reference_c=self.spec.get("thermal_reference_c"),
                              band_c=gate["band_c"] if gate else math.inf,
                              timeout_s=gate["timeout_s"] if gate else 0.0)
            if tr.timed_out:
                flags.append(QualityFlag(Flag.THERMAL_GATE_TIMEOUT,
                                         f"{tr.start_temperature_c} C vs reference {tr.reference_c} C"))
            thermal = {"start_temperature_c": tr.start_temperature_c, "reference_c": tr.reference_c,
                       "waited_s": tr.waited_s, "within_band": tr.within_band, "timed_out": tr.timed_out,
                       "gated": gate is not None}

        # The measured window: whole passes until the minimum window is reached.
        self._phase("window", tid)
        inject_fault(tid)
        backend.reset_peak_memory()
        sampler = self._sampler()
        if sampler is not None:
            sampler.begin()
        results: list[RequestResult] = []
        passes = 0
        steady = None
        if params.get("mode") == "served":
            steady = SteadyMarks(self.devices)   # counters read live at the steady state's edges
            backend.steady_state_hooks = (steady.on_start, steady.on_end)
        try:
            with EnergyWindow(self.devices, sync=backend.synchronize) as w, \
                    EnergyWindow(self.cpu_devs) as wcpu, EnergyWindow(self.unused_devs) as wunused:
                t_end = time.perf_counter() + float(self.m["min_window_s"])
                while True:
                    results.extend(backend.generate(requests, params))
                    passes += 1
                    if steady is not None:
                        steady.close_pass(getattr(backend, "steady_state", None))
                    if time.perf_counter() >= t_end:
                        break
        finally:
            timeline = sampler.end() if sampler is not None else None
        win = w.result
        ts_rel = None
        if timeline is not None and len(timeline):
            from joulebench.meters.sampler import write_timeseries

            ts_rel = f"timeseries/{tid}.parquet"
            write_timeseries(timeline, self.out.root / ts_rel)

        # Flags from the window and the timeline.
        from joulebench.meters.flags import window_flags

        limits = {d.info.uuid: d.info.power_limit_w for d in self.devices}
        flags.extend(window_flags(win, timeline, counter_period_s=self.m.get("counter_period_s", 0.1),
                                  device_idle=self._device_idle_obj(), power_limits_w=limits)
                     if self.devices else [])
        flags.extend(win.flags)  # the window's own (counter unavailable, no meter at all, ...)
        if self.load_info and self.load_info.synthetic_weights:
            flags.append(QualityFlag(Flag.SYNTHETIC_WEIGHTS, params["model"]))
        stale = self.spec.get("device_idle_flags") or []
        for code in stale:
            flags.append(QualityFlag(Flag(code), None))

        rec = self._record(trial, win, wcpu.result, results, passes, warmup, thermal, pre, flags,
                           started_at, ts_rel, steady.summary() if steady is not None else None)
        if self.unused_devs and wunused.result is not None:
            rec["unused_devices"] = [
                {"index": de.info.index, "uuid": de.info.uuid, "name": de.info.name, "energy_j": de.energy_j,
                 "mean_power_w": de.energy_j / wunused.result.duration_s
                 if (de.energy_j is not None and wunused.result.duration_s) else None}
                for de in wunused.result.devices]
        self.out.write_record(rec)
        return rec

    def _sampler(self):
        """This worker's sampler process (started at the first window, restarted if it died)."""
        if not (self.m.get("sampler", True) and (self.devices or self.cpu_devs)):
            return None
        hz = float(self.m.get("sampler_hz", 10.0))
        if self.sampler is not None and (not self.sampler.alive or self.sampler.hz != hz):
            self.sampler.close()
            self.sampler = None
        if self.sampler is None:
            from joulebench.meters.sampler import Sampler

            s = Sampler([d.info.uuid for d in self.devices], hz=hz, cpu=bool(self.cpu_devs))
            s.open()
            self.sampler = s
        return self.sampler

    def _own_pids(self) -> set[int]:
        """This worker and everything below it (engine processes, the sampler)."""
        from joulebench.system.proc import descendants

        return descendants(os.getpid())

    def _device_idle_obj(self):
        d = self.spec.get("device_idle")
        if not d:
            return None
        from joulebench.meters.baselines import IdleBaseline

        return IdleBaseline(**d)

    def _idle_w(self, baseline: Any) -> float | None:
        """Sum of a baseline's per-device power over the devices measured in this trial."""
        if baseline is None:
            return None
        per = baseline["per_device_w"] if isinstance(baseline, dict) else baseline.per_device_w
        vals = [per.get(d.info.uuid) for d in self.devices]
        if not vals or any(v is None for v in vals):
            return None
        return float(sum(vals))

    # ------------------------------------------------------------------ record
    def _base_record(self, trial: dict[str, Any]) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "trial_id": trial["trial_id"], "config_id": trial["config_id"],
                "study": self.spec["study"], "params": trial["params"], "repeat": trial["repeat"],
                "round": trial.get("round", trial["repeat"]), "experiment_id": self.spec["experiment_id"],
                "worker_id": self.worker_id,
                "environment": self.env or {}, "node": self.spec.get("node") or {}}

    def _record(self, trial, win, wcpu, results, passes, warmup, thermal, pre, flags, started_at, ts_rel,
                steady=None):
        out_tok = sum(r.output_tokens for r in results)
        in_tok = sum(r.input_tokens for r in results)
        dur = win.duration_s
        energy = win.energy_j
        whole = {"duration_s": dur, "energy_j": energy, "output_tokens": out_tok, "input_tokens": in_tok}
        if steady and steady["duration_s"] > 0:
            # Served mode: the primary figures are the steady state's (after the first responses,
            # before the tail); the whole window is kept beside them.
            dur, out_tok = steady["duration_s"], steady["output_tokens"]
            energy = steady["energy_j"] if self.devices else None
            in_tok = round(whole["input_tokens"] * steady["output_tokens"] / whole["output_tokens"]) \
                if whole["output_tokens"] else in_tok
        dev_idle_w = self._idle_w(self.spec.get("device_idle"))
        loaded_idle_w = self._idle_w(self.loaded_idle)
        per_tok = (lambda e: e / out_tok if (e is not None and out_tok) else None)
        above_dev = energy - dev_idle_w * dur if (energy is not None and dev_idle_w is not None) else None
        above_loaded = energy - loaded_idle_w * dur if (energy is not None and loaded_idle_w is not None) else None
        itl = [x for r in results for x in r.itl_s()]
        flops, formula = analytic_flops(self.load_info.model_config if self.load_info else {}, results)
        devices = []
        for de in win.devices:
            uuid = de.info.uuid
            devices.append({
                "index": de.info.index, "uuid": uuid, "name": de.info.name, "kind": de.info.kind,
                "energy_j": de.energy_j, "energy_source": de.source,
                "device_idle_w": (self.spec.get("device_idle") or {}).get("per_device_w", {}).get(uuid),
                "loaded_idle_w": self.loaded_idle.per_device_w.get(uuid) if self.loaded_idle else None,
                "mean_power_w": de.energy_j / dur if (de.energy_j is not None and dur) else None,
                "start_temperature_c": de.start_temperature_c, "end_temperature_c": de.end_temperature_c,
                "power_limit_w": de.info.power_limit_w,
            })
        di = self.spec.get("device_idle") or {}
        rec = self._base_record(trial)
        rec.update({
            "status": "ok", "started_at": started_at, "finished_at": time.time(),
            "energy_j": energy, "energy_source": win.energy_source,
            "energy_above_device_idle_j": above_dev, "energy_above_loaded_idle_j": above_loaded,
            "energy_per_output_token_j": per_tok(energy),
            "energy_above_device_idle_per_output_token_j": per_tok(above_dev),
            "energy_above_loaded_idle_per_output_token_j": per_tok(above_loaded),
            "energy_per_request_j": energy / len(results) if (energy is not None and results) else None,
            "energy_per_token_j": energy / (in_tok + out_tok) if (energy is not None and in_tok + out_tok) else None,
            "mean_power_w": energy / dur if (energy is not None and dur) else None,
            "cpu_energy_j": wcpu.energy_j if wcpu else None,
            "cpu_energy_source": wcpu.energy_source if wcpu else None,
            "output_tokens": out_tok, "input_tokens": in_tok, "requests": len(results), "passes": passes,
            "duration_s": dur, "throughput_tok_s": out_tok / dur if dur else None,
            "input_throughput_tok_s": in_tok / dur if dur else None,
            "requests_per_s": len(results) / dur if dur else None,
            "ttft_s": percentile_stats([r.ttft_s for r in results]),
            "itl_s": percentile_stats(itl),
            "tpot_s": percentile_stats([r.tpot_s for r in results]),
            "latency_s": percentile_stats([r.latency_s for r in results]),
            "flops": flops, "flops_formula": formula,
            "peak_memory_bytes": self.backend.peak_memory_bytes(),
            "nvml_memory_used_bytes": sum((d.memory_used_bytes() or 0) for d in self.devices) or None,
            "weights_bytes": self.load_info.weights_bytes if self.load_info else None,
            "load_s": self.load_info.load_s if self.load_info else None,
            "load_energy_j": self.load_energy_j,
            "devices": devices,
            "baselines": {"device_idle_w": dev_idle_w, "loaded_idle_w": loaded_idle_w,
                          "device_idle_measured_at": di.get("measured_at"),
                          "device_idle_duration_s": di.get("duration_s"),
                          "loaded_idle_duration_s": self.loaded_idle.duration_s if self.loaded_idle else None,
                          "loaded_idle_measured_at": self.loaded_idle.measured_at if self.loaded_idle else None},
            "warmup": warmup, "thermal": thermal, "preflight": pre,
            "flags": [f.to_dict() for f in flags],
            "model": {**parse_model(trial["params"]["model"]).describe(),
                      "parameters": self.load_info.parameters if self.load_info else None,
                      "config": self.load_info.model_config if self.load_info else {}},
            "timeseries": ts_rel,
            "steady_state": steady,
            "whole_window": whole if steady else None,
        })
        return TrialRecord.model_validate(rec).model_dump(mode="json")

    def _write_failed(self, trial: dict[str, Any], error: str, kind: str, tb: str | None = None) -> dict[str, Any]:
        rec = self._base_record(trial)
        rec.update({"status": "failed", "error": error, "error_kind": kind, "finished_at": time.time()})
        if tb:
            (self.out.logs_dir / f"{trial['trial_id']}.traceback.txt").write_text(tb)
        rec = TrialRecord.model_validate(rec).model_dump(mode="json")
        self.out.write_record(rec)
        return rec


class SteadyMarks:
    """Energy counters read live when a served pass enters and leaves its steady state."""

    def __init__(self, devices):
        self.devices = devices
        self._start = self._end = None
        self.segments: list[dict[str, Any]] = []

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

    def close_pass(self, state) -> None:
        s, e = self._start, self._end
        self._start = self._end = None
        if state is None or s is None or e is None or e[0] <= s[0]:
            return
        energy = None
        if self.devices and all(x is not None for x in s[1] + e[1]):
            energy = sum(b - a for a, b in zip(s[1], e[1]))
        self.segments.append({"duration_s": e[0] - s[0], "energy_j": energy,
                              "output_tokens": int(state.output_tokens)})

    def summary(self) -> dict[str, Any] | None:
        if not self.segments:
            return None
        energies = [g["energy_j"] for g in self.segments]
        return {"segments": len(self.segments),
                "duration_s": sum(g["duration_s"] for g in self.segments),
                "energy_j": sum(energies) if all(x is not None for x in energies) else None,
                "output_tokens": sum(g["output_tokens"] for g in self.segments),
                "definition": "first completed response -> last request submitted, per pass"}


def load_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What a worker's model load depends on: the first trial's load-time parameters."""
    from joulebench.backends import load_parameters

    return load_parameters(spec["trials"][0]["params"]) if spec.get("trials") else {}


