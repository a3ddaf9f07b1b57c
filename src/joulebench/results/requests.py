"""A served trial's requests, token by token: ``timeseries/<trial>.requests.parquet`` beside its timeline.

The per-request energy in a record is one attribution rule applied once (analysis/attribution.py).
This file keeps what the rule was applied to, so that any rule can be applied again offline to the
same window (``reattribute``), and compared with another on real traces.

One row per request of the measured window (all passes): ``index``, ``request_class``,
``input_tokens``, ``output_tokens``, ``token_times_exact``, ``finish_reason`` and the times as
whole microseconds after the file's origin (``origin_s``, a ``time.perf_counter()`` reading):
``submit_us``, ``completed_us`` (-1: none) and ``token_times_us`` (a list). The file's metadata
holds ``origin_s``, ``clock_offset_s`` (``time.time() - time.perf_counter()`` in the worker: what
puts these times on the timeline's clock) and the window the rule divided: its edges on the
timeline's clock, its energy (J) and the metered GPUs' UUIDs. Microseconds keep every gap the load generator
stamps (its clock reads are microseconds apart at best) at about a quarter of float64's size.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from joulebench.backends.base import RequestResult

SCHEMA = "joulebench.requests/1"


def requests_trace_path(trial_id: str) -> str:
    """The trace's path relative to the study folder (it travels with the timeline)."""
    return f"timeseries/{trial_id}.requests.parquet"


def _us(t: float, origin: float) -> int:
    return int(round((t - origin) * 1e6))


def write_requests_trace(results: Sequence[RequestResult], path: Path, *, clock_offset_s: float,
                         window_start_s: float | None, window_end_s: float | None,
                         window_energy_j: float | None, device_uuids: Sequence[str]) -> Path:
    """Write the trace atomically (a temporary name, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    origin = min((r.submit_s for r in results), default=0.0)
    table = pa.table({
        "index": pa.array([r.index for r in results], pa.int32()),
        "request_class": pa.array([r.request_class for r in results], pa.string()),
        "input_tokens": pa.array([r.input_tokens for r in results], pa.int32()),
        "output_tokens": pa.array([r.output_tokens for r in results], pa.int32()),
        "token_times_exact": pa.array([bool(r.token_times_exact) for r in results], pa.bool_()),
        "finish_reason": pa.array([r.finish_reason for r in results], pa.string()),
        "submit_us": pa.array([_us(r.submit_s, origin) for r in results], pa.int64()),
        "completed_us": pa.array([_us(r.completed_s, origin) if r.completed_s is not None else -1
                                  for r in results], pa.int64()),
        "token_times_us": pa.array([[_us(t, origin) for t in r.token_times_s] for r in results],
                                   pa.list_(pa.int64())),
    })
    meta = {"schema": SCHEMA, "origin_s": float(origin), "clock_offset_s": float(clock_offset_s),
            "window_start_s": window_start_s, "window_end_s": window_end_s, "window_energy_j": window_energy_j,
            "device_uuids": list(device_uuids)}
    table = table.replace_schema_metadata({"joulebench": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def read_requests_trace(path: Path) -> tuple[list[RequestResult], dict]:
    """(the requests with perf_counter times, to 1 microsecond; the metadata: clock_offset_s, the window)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"joulebench")
    meta = json.loads(raw) if raw else {}
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a joulebench requests trace (schema {meta.get('schema')!r})")
    origin = float(meta["origin_s"])
    out = []
    for row in table.to_pylist():
        out.append(RequestResult(
            index=row["index"], input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
            submit_s=origin + row["submit_us"] / 1e6,
            token_times_s=[origin + t / 1e6 for t in row["token_times_us"] or []],
            token_times_exact=row["token_times_exact"], finish_reason=row["finish_reason"],
            completed_s=origin + row["completed_us"] / 1e6 if row["completed_us"] >= 0 else None,
            request_class=row["request_class"]))
    return out, meta


def reattribute(trace: Path, timeline: Path | None = None, **rule_options):
    """Apply the attribution rule again to a served trial's stored window: its requests trace and (when given)
    its timeline parquet. ``rule_options`` go to ``per_request_energy`` (e.g. ``prefill_weight``). Returns
    its ``PerRequestEnergy`` block, or None when the window had no energy."""
    import pandas as pd

    from joulebench.analysis.attribution import window_request_energy

    results, meta = read_requests_trace(Path(trace))
    if meta.get("window_energy_j") is None or meta.get("window_start_s") is None:
        return None
    tl = pd.read_parquet(timeline) if timeline is not None and Path(timeline).is_file() else None
    return window_request_energy(results, tl, meta["device_uuids"], float(meta["window_start_s"]),
                                 float(meta["window_end_s"]), float(meta["window_energy_j"]),
                                 clock_offset_s=float(meta["clock_offset_s"]), **rule_options)
