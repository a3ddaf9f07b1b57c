"""The trial record, built from what a trial measured: pure functions, no I/O.

The worker's session and trial protocol gather the figures (counters, timings, the load's
facts); these functions turn them into the record's fields (results/schema.py's TrialRecord).
Served-mode steady state (the part of each pass from the B-th first token to the (N-B)-th
completion, ML.ENERGY's definition) replaces the whole window's duration, energy and tokens as
the primary figures; the whole window is kept beside them. The per-request energy block
(analysis/attribution.py) and the SLO figures cover the whole window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from joulebench.backends.base import LoadInfo, RequestResult
from joulebench.meters.baselines import IdleBaseline
from joulebench.meters.flags import QualityFlag
from joulebench.meters.window import WindowMeasurement
from joulebench.models import parse_model
from joulebench.results.schema import SCHEMA_VERSION, TrialRecord
from joulebench.spec import ErrorKind, ExperimentSpec, TrialSpec, TrialStatus


@dataclass(frozen=True)
class WorkerFacts:
    """What this worker's model load left behind, the same for each trial it runs."""
    worker_id: str
    environment: dict[str, Any] = field(default_factory=dict)
    load_info: LoadInfo | None = None
    load_energy_j: float | None = None
    loaded_idle: IdleBaseline | None = None


@dataclass(frozen=True)
class TrialMeasurement:
    """What one trial's measured window produced, read off the devices by the caller."""
    window: WindowMeasurement
    cpu_window: WindowMeasurement | None
    results: Sequence[RequestResult]
    passes: int
    device_uuids: Sequence[str]            # the GPUs the trial was measured on
    started_at: float
    finished_at: float
    peak_memory_bytes: int | None = None
    nvml_memory_used_bytes: int | None = None
    timeseries: str | None = None          # the timeseries file, relative to the study folder
    requests_trace: str | None = None      # served mode: the requests, token by token (results/requests.py)
    host_cpu: dict[str, Any] | None = None # CPU the worker's process tree used over the window (system/proc.py)
    steady: dict[str, Any] | None = None   # served mode: the steady state's summary (SteadyMarks)
    warmup: dict[str, Any] = field(default_factory=dict)
    thermal: dict[str, Any] = field(default_factory=dict)
    preflight: dict[str, Any] = field(default_factory=dict)
    flags: Sequence[QualityFlag] = ()
    per_request_energy: dict[str, Any] | None = None   # served mode: analysis.attribution's block
    device_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # UUID -> the timeline over the window


def percentile_stats(values: Iterable[float | None]) -> dict[str, Any] | None:
    import numpy as np

    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    a = np.asarray(xs, dtype=float)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def analytic_flops(model_config: dict[str, Any], results: Sequence[RequestResult]) -> tuple[float | None, str]:
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


def idle_w(per_device_w: dict[str, float | None] | None, uuids: Sequence[str]) -> float | None:
    """A baseline's power summed over these devices; None if any of them (or all: none given) is missing."""
    if per_device_w is None:
        return None
    vals = [per_device_w.get(u) for u in uuids]
    if not vals or any(v is None for v in vals):
        return None
    return float(sum(vals))


def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den; None when either is missing or the denominator is zero."""
    return num / den if (num is not None and den) else None


def _above(energy_j: float | None, idle_power_w: float | None, duration_s: float) -> float | None:
    return energy_j - idle_power_w * duration_s if (energy_j is not None and idle_power_w is not None) else None


def base_record(spec: ExperimentSpec, trial: TrialSpec, facts: WorkerFacts) -> dict[str, Any]:
    """The fields every record has, measured or failed."""
    return {"schema_version": SCHEMA_VERSION, "trial_id": trial.trial_id, "config_id": trial.config_id,
            "study": spec.study, "params": trial.params, "repeat": trial.repeat, "round": trial.round,
            "experiment_id": spec.experiment_id, "worker_id": facts.worker_id,
            "environment": facts.environment or {}, "node": spec.node or {}}


def failed_record(spec: ExperimentSpec, trial: TrialSpec, facts: WorkerFacts, error: str, kind: ErrorKind,
                  finished_at: float) -> dict[str, Any]:
    rec = base_record(spec, trial, facts)
    rec.update({"status": TrialStatus.FAILED.value, "error": error, "error_kind": ErrorKind(kind).value,
                "finished_at": finished_at})
    return _dump(rec)


def primary_figures(m: TrialMeasurement) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(duration_s, energy_j, output_tokens, input_tokens) that the record's figures use, and the whole
    window's when the served steady state replaced them (else None)."""
    out_tok = sum(r.output_tokens for r in m.results)
    in_tok = sum(r.input_tokens for r in m.results)
    whole = {"duration_s": m.window.duration_s, "energy_j": m.window.energy_j, "output_tokens": out_tok,
             "input_tokens": in_tok}
    steady = m.steady
    if not (steady and steady["duration_s"] > 0):
        return dict(whole), (whole if steady else None)
    primary = {"duration_s": steady["duration_s"], "output_tokens": steady["output_tokens"],
               "energy_j": steady["energy_j"] if m.device_uuids else None,
               "input_tokens": round(in_tok * steady["output_tokens"] / out_tok) if out_tok else in_tok}
    return primary, whole


def energy_fields(p: dict[str, Any], n_requests: int, device_idle_w: float | None,
                  loaded_idle_w: float | None) -> dict[str, Any]:
    """Energy, its parts above the idle references, and per output token, request and token."""
    energy, dur, out_tok, in_tok = p["energy_j"], p["duration_s"], p["output_tokens"], p["input_tokens"]
    above_dev = _above(energy, device_idle_w, dur)
    above_loaded = _above(energy, loaded_idle_w, dur)
    return {
        "energy_j": energy,
        "energy_above_device_idle_j": above_dev, "energy_above_loaded_idle_j": above_loaded,
        "energy_per_output_token_j": _ratio(energy, out_tok),
        "energy_above_device_idle_per_output_token_j": _ratio(above_dev, out_tok),
        "energy_above_loaded_idle_per_output_token_j": _ratio(above_loaded, out_tok),
        "energy_per_request_j": _ratio(energy, n_requests),
        "energy_per_token_j": _ratio(energy, in_tok + out_tok),
        "mean_power_w": _ratio(energy, dur),
    }


def speed_fields(p: dict[str, Any], results: Sequence[RequestResult], passes: int) -> dict[str, Any]:
    """Token counts, throughputs and the latency distributions."""
    dur, out_tok, in_tok = p["duration_s"], p["output_tokens"], p["input_tokens"]
    n = len(results)
    return {
        "output_tokens": out_tok, "input_tokens": in_tok, "requests": n, "passes": passes,
        "duration_s": dur, "throughput_tok_s": out_tok / dur if dur else None,
        "input_throughput_tok_s": in_tok / dur if dur else None,
        "requests_per_s": n / dur if dur else None,
        "ttft_s": percentile_stats([r.ttft_s for r in results]),
        "itl_s": percentile_stats([x for r in results for x in r.itl_s()]),
        "tpot_s": percentile_stats([r.tpot_s for r in results]),
        "latency_s": percentile_stats([r.latency_s for r in results]),
    }


def slo_fields(slo: dict[str, Any] | None, results: Sequence[RequestResult], duration_s: float,
               energy_j: float | None) -> dict[str, Any] | None:
    """SLO attainment and goodput over the whole window: a request meets the SLO when its TTFT and its
    TPOT are within the bounds given (a one-token request has no TPOT and meets that bound)."""
    if not slo or not results:
        return None
    ttft_max, tpot_max = slo.get("ttft_s"), slo.get("tpot_s")

    def meets(r: RequestResult) -> bool:
        if ttft_max is not None and (r.ttft_s is None or r.ttft_s > ttft_max):
            return False
        return tpot_max is None or r.tpot_s is None or r.tpot_s <= tpot_max

    met = sum(1 for r in results if meets(r))
    return {"ttft_s": ttft_max, "tpot_s": tpot_max, "requests": len(results), "requests_met": met,
            "attainment": met / len(results), "goodput_req_s": met / duration_s if duration_s > 0 else None,
            "goodput_req_per_j": _ratio(met, energy_j)}


def device_rows(window: WindowMeasurement, duration_s: float, device_idle: dict[str, Any] | None,
                loaded_idle: IdleBaseline | None, host_index: dict[str, int] | None = None,
                stats: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per metered device of the window, with its idle references. ``host_index``: UUID -> the host's
    index of that GPU (a container numbers its GPUs from 0; records say the host's). ``stats``: UUID -> what
    the sampler's timeline says of the device over the window (meters/sampler.device_window_stats): the row's
    ``timeline`` (None without a timeline)."""
    stats = stats or {}
    dev_per = (device_idle or {}).get("per_device_w", {})
    host_index = host_index or {}
    return [{
        "index": host_index.get(de.info.uuid, de.info.index), "uuid": de.info.uuid, "name": de.info.name, "kind": de.info.kind,
        "energy_j": de.energy_j, "energy_source": de.source,
        "device_idle_w": dev_per.get(de.info.uuid),
        "loaded_idle_w": loaded_idle.per_device_w.get(de.info.uuid) if loaded_idle else None,
        "mean_power_w": _ratio(de.energy_j, duration_s),
        "start_temperature_c": de.start_temperature_c, "end_temperature_c": de.end_temperature_c,
        "power_limit_w": de.info.power_limit_w,
        "timeline": stats.get(de.info.uuid),
    } for de in window.devices]


def baselines_field(device_idle: dict[str, Any] | None, loaded_idle: IdleBaseline | None,
                    device_idle_w: float | None, loaded_idle_w: float | None) -> dict[str, Any]:
    di = device_idle or {}
    return {"device_idle_w": device_idle_w, "loaded_idle_w": loaded_idle_w,
            "device_idle_measured_at": di.get("measured_at"), "device_idle_duration_s": di.get("duration_s"),
            "loaded_idle_duration_s": loaded_idle.duration_s if loaded_idle else None,
            "loaded_idle_measured_at": loaded_idle.measured_at if loaded_idle else None}


_SECRET = ("key", "token", "secret", "password", "passwd", "credential")


def load_notes(notes: dict[str, Any]) -> dict[str, Any]:
    """The backend's load notes for the record (engine version, server command, readiness time, how passes are
    kept from each other's prefix cache, ...), with the value after any secret-looking flag of a command
    (``--api-key X``, ``--hf-token=X``) and any secret-looking key masked."""
    def clean(key: str, value: Any) -> Any:
        if any(w in key.lower() for w in _SECRET):
            return "[masked]"
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            out: list[str] = []
            for i, arg in enumerate(value):
                prev = value[i - 1] if i else ""
                if prev.startswith("-") and "=" not in prev and any(w in prev.lower() for w in _SECRET):
                    out.append("[masked]")
                elif arg.startswith("-") and "=" in arg and any(w in arg.split("=", 1)[0].lower() for w in _SECRET):
                    out.append(arg.split("=", 1)[0] + "=[masked]")
                else:
                    out.append(arg)
            return out
        if isinstance(value, dict):
            return {k: clean(str(k), v) for k, v in value.items()}
        return value
    return {str(k): clean(str(k), v) for k, v in (notes or {}).items()}


def model_fields(model: str, results: Sequence[RequestResult], info: LoadInfo | None) -> dict[str, Any]:
    flops, formula = analytic_flops(info.model_config if info else {}, results)
    return {"flops": flops, "flops_formula": formula,
            "model": {**parse_model(model).describe(), "parameters": info.parameters if info else None,
                      "config": info.model_config if info else {}}}


def trial_record(spec: ExperimentSpec, trial: TrialSpec, facts: WorkerFacts, m: TrialMeasurement) -> dict[str, Any]:
    """The record of a measured trial (validated against TrialRecord)."""
    primary, whole = primary_figures(m)
    dev_idle_w = idle_w((spec.device_idle or {}).get("per_device_w"), m.device_uuids)
    loaded_idle_w = idle_w(facts.loaded_idle.per_device_w if facts.loaded_idle else None, m.device_uuids)
    info = facts.load_info
    rec = base_record(spec, trial, facts)
    rec.update({"status": TrialStatus.OK.value, "started_at": m.started_at, "finished_at": m.finished_at,
                "energy_source": m.window.energy_source})
    rec.update(energy_fields(primary, len(m.results), dev_idle_w, loaded_idle_w))
    rec.update({"cpu_energy_j": m.cpu_window.energy_j if m.cpu_window else None,
                "cpu_energy_source": m.cpu_window.energy_source if m.cpu_window else None})
    rec.update(speed_fields(primary, m.results, m.passes))
    rec.update(model_fields(trial.params["model"], m.results, info))
    rec.update({
        "peak_memory_bytes": m.peak_memory_bytes, "nvml_memory_used_bytes": m.nvml_memory_used_bytes,
        "weights_bytes": info.weights_bytes if info else None, "load_s": info.load_s if info else None,
        "load_notes": load_notes(info.notes) if info else {},
        "load_energy_j": facts.load_energy_j,
        # a device row holds the device's counter energy over the whole window, so its mean power is over the
        # whole window too (served mode's primary duration is the steady state, a part of it)
        "devices": device_rows(m.window, m.window.duration_s, spec.device_idle, facts.loaded_idle,
                               {g.uuid: g.index for g in spec.gpus if g.uuid}, m.device_stats),
        "baselines": baselines_field(spec.device_idle, facts.loaded_idle, dev_idle_w, loaded_idle_w),
        "warmup": m.warmup, "thermal": m.thermal, "preflight": m.preflight,
        "flags": [f.to_dict() for f in m.flags],
        "timeseries": m.timeseries, "requests_trace": m.requests_trace, "host_cpu": m.host_cpu, "steady_state": m.steady, "whole_window": whole,
        "per_request_energy": m.per_request_energy,
        "slo": slo_fields(trial.params.get("slo"), m.results, m.window.duration_s, m.window.energy_j),
    })
    return _dump(rec)


SERVED_ONLY_FIELDS = ("per_request_energy", "slo")


def _dump(rec: dict[str, Any]) -> dict[str, Any]:
    """The validated record; served-only fields are absent, not null, when empty (earlier records' shape)."""
    out = TrialRecord.model_validate(rec).model_dump(mode="json")
    for key in SERVED_ONLY_FIELDS:
        if out.get(key) is None:
            out.pop(key, None)
    return out


def unused_device_rows(window: WindowMeasurement) -> list[dict[str, Any]]:
    """The visible GPUs a trial did not use, measured over its window: reported apart, never summed."""
    return [{"index": de.info.index, "uuid": de.info.uuid, "name": de.info.name, "energy_j": de.energy_j,
             "mean_power_w": _ratio(de.energy_j, window.duration_s)} for de in window.devices]
