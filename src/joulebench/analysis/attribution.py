"""Per-request energy under continuous batching: a documented attribution rule (pure, no I/O).

A served engine runs many requests at once, so a request's energy is not metered: it is
attributed. The rule:

1. The measured window is cut into the sampler's intervals (the 10 Hz timeline). An interval's
   energy is the device's energy-counter delta where the timeline has counter readings, else
   its power x dt (zero-order hold, as ``meters.flags.power_integral_j``); the pieces between
   the window's edges and the first / last sample use the nearest sample's power. Several
   devices are summed on the union of their sample times (uniform power inside one sample
   interval). The intervals are then scaled by one factor so that they sum exactly to the
   window's energy (the counters read at the window's edges); ``timeline_scale`` records it
   (1.0 within the counters' resolution when the timeline has counters). Without a timeline
   the window is one interval.
2. Each interval's energy is divided among the requests that processed tokens in it, in
   proportion to the tokens processed: each decode (output) token counts 1 unit in the interval
   where its timestamp falls; a request's prefill counts ``prefill_weight`` x its input tokens
   (plus its first output token) in the interval where its first token arrived. The prefill
   weight (default 1: one prompt token costs as much as one decoded token) is a modelling
   choice, not a measurement: prefill is compute-bound and batched, decode memory-bound.
   Token times that are not exact (first and last only) are spread evenly between the two.
3. An interval with energy but no tokens (prefill under way, a request waiting) is split over
   the requests in flight (submitted, not yet completed) by their time in the interval.
4. Energy of intervals with nothing in flight (between passes) goes to all requests in
   proportion to what they already got (equally if nothing was given yet).

Conservation holds by construction: the per-request energies sum to the window's energy
(``conservation_rel_error`` reports the floating-point residue).

Clocks: the load generator stamps tokens with ``time.perf_counter()`` in the worker process;
the sampler (a separate process) stamps rows with ``time.time()``. The worker reads both
clocks once (``clock_offset_s = time.time() - time.perf_counter()``) and request times are
shifted by it onto the timeline's clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from joulebench.backends.base import RequestResult
from joulebench.results.schema import (ATTRIBUTION_RULE as RULE, ClassEnergy, Distribution, LengthFit,  # noqa: F401
                                       PerRequestEnergy)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

@dataclass(frozen=True)
class Intervals:
    """Consecutive intervals [edges[k], edges[k+1]) of the window (timeline clock) and their energies (J)."""
    edges: np.ndarray
    energy_j: np.ndarray
    source: str
    scale: float | None = None


# ------------------------------------------------------------------ intervals
def _device_pieces(rows: "pd.DataFrame", start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray, str] | None:
    """One device: breakpoints and the energy of each piece between them, over [start, end]."""
    rows = rows.sort_values("t_s")
    t = rows["t_s"].to_numpy(dtype=float)
    keep = (t > start_s) & (t < end_s)
    sel = rows[keep]
    t = t[keep]
    power_col = next((c for c in ("power_w", "power_instant_w")
                      if c in sel.columns and sel[c].notna().any()), None)
    counter = sel["energy_j"].to_numpy(dtype=float) if "energy_j" in sel.columns else np.array([])
    use_counter = len(t) >= 2 and counter.size == t.size and np.all(np.isfinite(counter))
    if not use_counter and power_col is None:
        return None
    edges = np.concatenate([[start_s], t, [end_s]])
    if use_counter:
        inner = np.diff(counter)
        dt_inner = np.diff(t)
        rate = inner.sum() / dt_inner.sum() if dt_inner.sum() > 0 else 0.0
        if power_col is not None:
            p = sel[power_col].to_numpy(dtype=float)
            p_first = p[0] if np.isfinite(p[0]) else rate
            p_last = p[-1] if np.isfinite(p[-1]) else rate
        else:
            p_first = p_last = rate
        energy = np.concatenate([[p_first * (t[0] - start_s)], inner, [p_last * (end_s - t[-1])]])
        return edges, np.maximum(energy, 0.0), "counter"
    if len(t) == 0:
        return None
    p = sel[power_col].to_numpy(dtype=float)
    p = np.where(np.isfinite(p), p, np.nanmean(p) if np.isfinite(p).any() else 0.0)
    # zero-order hold: sample i holds until sample i+1; the first is held back to the start
    held = np.concatenate([[p[0]], p])
    return edges, np.maximum(held * np.diff(edges), 0.0), "power"


def timeline_intervals(timeline: "pd.DataFrame | None", device_uuids: Sequence[str], start_s: float, end_s: float,
                       window_energy_j: float) -> Intervals:
    """The window's intervals from the sampler's timeline (``t_s`` in the timeline clock), scaled to sum
    exactly to ``window_energy_j``. One interval when there is no usable timeline."""
    one = Intervals(np.array([start_s, end_s]), np.array([float(window_energy_j)]), "window")
    if timeline is None or len(timeline) == 0 or end_s <= start_s or "device_uuid" not in timeline.columns:
        return one
    pieces = []
    for uuid in device_uuids:
        got = _device_pieces(timeline[timeline["device_uuid"] == uuid], start_s, end_s)
        if got is None:
            return one            # a device without readings: the timeline cannot stand for the window
        pieces.append(got)
    if not pieces:
        return one
    grid = np.unique(np.concatenate([p[0] for p in pieces]))
    total = np.zeros(len(grid) - 1)
    mids = (grid[:-1] + grid[1:]) / 2
    lengths = np.diff(grid)
    for edges, energy, _ in pieces:
        k = np.clip(np.searchsorted(edges, mids, side="right") - 1, 0, len(energy) - 1)
        span = np.diff(edges)[k]
        total += np.where(span > 0, energy[k] * lengths / np.where(span > 0, span, 1.0), 0.0)
    s = total.sum()
    if not (s > 0 and math.isfinite(s)):
        return one
    scale = float(window_energy_j) / s
    source = "counter" if all(p[2] == "counter" for p in pieces) else "power"
    return Intervals(grid, total * scale, source, scale)


# ------------------------------------------------------------------ attribution
def _token_units(r: RequestResult, prefill_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, units) of the tokens a request processed (its own clock)."""
    t = r.token_times_s
    if not t:
        return np.array([]), np.array([])
    first = prefill_weight * r.input_tokens + 1.0
    if r.token_times_exact or r.output_tokens <= 2:
        times = np.asarray(t, dtype=float)
        units = np.ones(len(times))
        units[0] = first
        return times, units
    rest = np.linspace(t[0], t[-1], r.output_tokens)[1:]     # inexact: spread evenly between first and last
    return np.concatenate([[t[0]], rest]), np.concatenate([[first], np.ones(len(rest))])


def context_weight_of(model_config: Mapping[str, Any]) -> float | None:
    """The ``context_weight`` of a decoder-only transformer's shape (config.json keys): the KV cache one context
    token adds to a decode step, over the weights every step reads once (all layers and the output head, tied or
    not; the embedding lookup reads only its rows); both in the same dtype. None when the config lacks the keys."""
    from joulebench.models.synthetic import parameter_count_of

    try:
        counts = parameter_count_of(model_config)
        layers, heads = int(model_config["num_hidden_layers"]), int(model_config["num_attention_heads"])
        kv_heads = int(model_config.get("num_key_value_heads") or heads)
        hd = int(model_config.get("head_dim") or int(model_config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError):
        return None
    step_params = counts["non_embedding"] + (counts["lm_head"] or counts["embedding"])
    return 2 * layers * kv_heads * hd / step_params if step_params else None


def attribute(results: Sequence[RequestResult], intervals: Intervals, *, clock_offset_s: float = 0.0,
              prefill_weight: float = 1.0, context_weight: float = 0.0) -> np.ndarray:
    """Energy (J) of each request (in the order of ``results``); sums to ``intervals.energy_j.sum()``.

    ``context_weight`` (w, default 0: every decode token counts 1): a decode token of a request at context c
    (its input plus the tokens it has output) counts 1 + w * c * n in an interval where n requests decode. This
    is a decode step's memory traffic shared out: the step reads the weights once for its n requests (1/n of it
    each) and each request's own KV cache (w * c in units of the weights); ``context_weight_of`` gives w of a
    model's shape (KV bytes per context token / weight bytes)."""
    if prefill_weight < 0:
        raise ValueError("prefill_weight must be >= 0")
    if context_weight < 0:
        raise ValueError("context_weight must be >= 0")
    n = len(results)
    out = np.zeros(n)
    if n == 0:
        return out
    edges, energy = intervals.edges, intervals.energy_j.astype(float)
    k_count = len(energy)
    times, units, owner = [], [], []
    for i, r in enumerate(results):
        t, u = _token_units(r, prefill_weight)
        times.append(t + clock_offset_s)
        units.append(u)
        owner.append(np.full(len(t), i))
    t_all = np.concatenate(times) if times else np.array([])
    u_all = np.concatenate(units) if units else np.array([])
    o_all = np.concatenate(owner).astype(int) if owner else np.array([], dtype=int)
    k_all = np.clip(np.searchsorted(edges, t_all, side="right") - 1, 0, k_count - 1)
    if context_weight > 0 and len(t_all):
        # position of each token in its request (0: the first token, which carries the prefill)
        pos = np.concatenate([np.arange(len(t)) for t in times])
        ctx = np.array([results[i].input_tokens for i in o_all], dtype=float) + pos
        decoding = np.bincount(np.unique(k_all * n + o_all) // n, minlength=k_count)   # requests per interval
        u_all = np.where(pos > 0, u_all * (1.0 + context_weight * ctx * decoding[k_all]), u_all)
    per_interval_units = np.bincount(k_all, weights=u_all, minlength=k_count)
    has_tokens = per_interval_units > 0
    share = np.where(has_tokens[k_all], energy[k_all] * u_all / np.where(has_tokens, per_interval_units, 1.0)[k_all],
                     0.0)
    out += np.bincount(o_all, weights=share, minlength=n)
    # token-less intervals: by time in flight
    submit = np.array([r.submit_s for r in results], dtype=float) + clock_offset_s
    done = np.array([_completion(r) for r in results], dtype=float) + clock_offset_s
    leftover = 0.0
    for k in np.nonzero(~has_tokens & (energy != 0))[0]:
        a, b = edges[k], edges[k + 1]
        overlap = np.clip(np.minimum(b, done) - np.maximum(a, submit), 0.0, None)
        tot = overlap.sum()
        if tot > 0:
            out += energy[k] * overlap / tot
        else:
            leftover += energy[k]
    if leftover:
        got = out.sum()
        out += leftover * (out / got if got > 0 else np.full(n, 1.0 / n))
    return out


def _completion(r: RequestResult) -> float:
    if r.completed_s is not None:
        return r.completed_s
    return r.token_times_s[-1] if r.token_times_s else r.submit_s


def distribution(values: Iterable[float]) -> Distribution | None:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if a.size == 0:
        return None
    return Distribution(median=float(np.median(a)), p90=float(np.percentile(a, 90)),
                        p99=float(np.percentile(a, 99)), mean=float(a.mean()), n=int(a.size))


def length_fit(energy_j: Sequence[float], input_tokens: Sequence[float], output_tokens: Sequence[float]) -> LengthFit | None:
    """Least squares J/request = a + b x input + c x output; a length that does not vary is left out (None)."""
    y = np.asarray(energy_j, dtype=float)
    if y.size < 2:
        return None
    cols, names = [np.ones_like(y)], ["a"]
    for name, x in (("b", input_tokens), ("c", output_tokens)):
        x = np.asarray(x, dtype=float)
        if np.ptp(x) > 0:
            cols.append(x)
            names.append(name)
    if y.size < len(cols):
        return None
    X = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    got = dict(zip(names, (float(c) for c in coef)))
    resid = y - X @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else None
    return LengthFit(intercept_j=got["a"], per_input_token_j=got.get("b"), per_output_token_j=got.get("c"), r2=r2)


def per_request_energy(results: Sequence[RequestResult], intervals: Intervals, *, clock_offset_s: float = 0.0,
                       prefill_weight: float = 1.0, context_weight: float = 0.0) -> PerRequestEnergy | None:
    """The record's block: attributed J/request, its distribution, the length fit, per-class means."""
    if not results:
        return None
    e = attribute(results, intervals, clock_offset_s=clock_offset_s, prefill_weight=prefill_weight,
                  context_weight=context_weight)
    window = float(intervals.energy_j.sum())
    rel = abs(float(e.sum()) - window) / abs(window) if window else 0.0
    by_class: dict[str, ClassEnergy] = {}
    names = sorted({r.request_class for r in results if r.request_class is not None})
    for name in names:
        idx = [i for i, r in enumerate(results) if r.request_class == name]
        by_class[name] = ClassEnergy(
            requests=len(idx), energy_j_mean=float(e[idx].mean()), energy_j_median=float(np.median(e[idx])),
            input_tokens_mean=float(np.mean([results[i].input_tokens for i in idx])),
            output_tokens_mean=float(np.mean([results[i].output_tokens for i in idx])))
    return PerRequestEnergy(
        prefill_weight=prefill_weight, context_weight=context_weight, window_energy_j=window, requests=len(results),
        intervals=len(intervals.energy_j), interval_source=intervals.source, timeline_scale=intervals.scale,
        energy_j=distribution(e),
        fit=length_fit(e, [r.input_tokens for r in results], [r.output_tokens for r in results]),
        conservation_rel_error=rel, by_class=by_class or None)


def window_request_energy(results: Sequence[RequestResult], timeline: "pd.DataFrame | None",
                          device_uuids: Sequence[str], start_s: float, end_s: float, energy_j: float, *,
                          clock_offset_s: float = 0.0, **rule_options: float) -> PerRequestEnergy | None:
    """One measured window's requests and sampler timeline -> its ``per_request_energy`` block (the worker at the
    end of a trial, and ``results.requests.reattribute`` offline); ``rule_options``: ``prefill_weight``,
    ``context_weight``."""
    intervals = timeline_intervals(timeline, device_uuids, start_s, end_s, energy_j)
    return per_request_energy(results, intervals, clock_offset_s=clock_offset_s, **rule_options)


# ------------------------------------------------------------------ validation: a class in a mix vs alone
@dataclass(frozen=True)
class ClassComparison:
    """A class's attributed J/request in a mix against the same class run alone."""
    request_class: str
    mix_j_per_request: float
    alone_j_per_request: float
    ratio: float                     # mix / alone
    rel_diff: float                  # (mix - alone) / alone
    mix_trials: int
    alone_trials: int
    mix_running_batch_mean: float | None = None
    alone_running_batch_mean: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _class_means(records: Iterable[Mapping[str, Any]], name: str) -> tuple[list[float], list[float]]:
    means, occ = [], []
    for rec in records:
        if rec.get("status", "ok") != "ok":
            continue
        block = (rec.get("per_request_energy") or {}).get("by_class") or {}
        if name in block:
            means.append(float(block[name]["energy_j_mean"]))
            o = (rec.get("steady_state") or {}).get("running_batch_mean")
            if o is not None:
                occ.append(float(o))
    return means, occ


def compare_class_alone(mix_records: Iterable[Mapping[str, Any]], alone_records: Iterable[Mapping[str, Any]],
                        request_class: str) -> ClassComparison:
    """Mean attributed J/request of ``request_class`` over the mixed trials against its trials alone
    (records whose ``per_request_energy.by_class`` holds it). Raises ValueError when either side lacks it."""
    mix, mix_occ = _class_means(mix_records, request_class)
    alone, alone_occ = _class_means(alone_records, request_class)
    if not mix or not alone:
        raise ValueError(f"class '{request_class}' missing from the "
                         f"{'mixed' if not mix else 'alone'} records' per_request_energy.by_class")
    m, a = float(np.mean(mix)), float(np.mean(alone))
    return ClassComparison(request_class=request_class, mix_j_per_request=m, alone_j_per_request=a,
                           ratio=m / a if a else math.nan, rel_diff=(m - a) / a if a else math.nan,
                           mix_trials=len(mix), alone_trials=len(alone),
                           mix_running_batch_mean=float(np.mean(mix_occ)) if mix_occ else None,
                           alone_running_batch_mean=float(np.mean(alone_occ)) if alone_occ else None)
