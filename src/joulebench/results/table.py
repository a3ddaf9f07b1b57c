"""The trial table: one row per trial record, flattened, units in the column names.

``load_results(study_dir)`` reads ``trials/*.json`` (DESIGN.md section 1) and returns a
pandas DataFrame; ``write_tables(study_dir)`` writes it as ``results.parquet`` and
``results.csv``. Column groups:

* identity: ``trial_id``, ``config_id``, ``study``, ``repeat``, ``round``, ``status``, ``error``, ...
* ``param.<name>``: the resolved configuration (lists and dicts as JSON text)
* every scalar field of the record (``energy_j``, ``energy_per_output_token_j``, ``throughput_tok_s``, ...)
* latency statistics: ``ttft_s_median``, ``ttft_s_p90``, ``ttft_s_p99``, ``ttft_s_mean``, ``ttft_s_n``, same for
  ``itl_s``, ``tpot_s``, ``latency_s``
* ``baseline_device_idle_w``, ``baseline_loaded_idle_w``, ``warmup_passes``, ``warmup_converged``, ``warmup_cv``
* devices: ``n_devices``, ``device_names``, ``device_energy_j_sum``, ``device_energy_j_max``,
  ``device_energy_j_min``, ``device_energy_sources`` and ``device<k>_energy_j`` per device position
* quality flags: ``flags`` (codes joined by ``;``) and ``n_flags``
* ``model.<key>`` and ``env.<key>`` for scalar entries of the record's ``model`` and ``environment``
* served mode, where the record has them: ``request_energy_j_median`` / ``_p90`` / ``_p99`` / ``_mean``
  (attributed J per request), ``conservation_rel_error``, ``slo_attainment``, ``goodput_req_s``,
  ``goodput_req_per_j`` (goodput per watt), ``steady_batch``, ``steady_running_batch_mean``
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from joulebench.results.store import StudyStore, atomic_write_bytes

LATENCY_FIELDS = ("ttft_s", "itl_s", "tpot_s", "latency_s")
LATENCY_STATS = ("median", "p90", "p99", "mean", "n")
_NESTED = {"params", "devices", "baselines", "warmup", "thermal", "preflight", "flags", "model",
           "environment", "node", "per_request_energy", "slo", *LATENCY_FIELDS}
ID_COLUMNS = ["trial_id", "config_id", "study", "repeat", "round", "status", "error_kind", "error"]


def _scalar(v: Any) -> Any:
    """Parquet-friendly cell: scalars as they are, containers as JSON text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def _served_columns(rec: dict[str, Any], row: dict[str, Any]) -> None:
    """Served mode's per-request energy, SLO goodput and steady-window occupancy (only where present)."""
    pre = rec.get("per_request_energy")
    if isinstance(pre, dict):
        dist = pre.get("energy_j") or {}
        for s in ("median", "p90", "p99", "mean"):
            row[f"request_energy_j_{s}"] = dist.get(s)
        row["conservation_rel_error"] = pre.get("conservation_rel_error")
    slo = rec.get("slo")
    if isinstance(slo, dict):
        row["slo_attainment"] = slo.get("attainment")
        row["goodput_req_s"] = slo.get("goodput_req_s")
        row["goodput_req_per_j"] = slo.get("goodput_req_per_j")
    steady = rec.get("steady_state")
    if isinstance(steady, dict) and "batch" in steady:
        row["steady_batch"] = steady.get("batch")
        row["steady_running_batch_mean"] = steady.get("running_batch_mean")


def flatten_record(rec: dict[str, Any]) -> dict[str, Any]:
    """One trial record (a dict as written by the store) -> one flat row."""
    row: dict[str, Any] = {}
    for k, v in rec.items():
        if k in _NESTED:
            continue
        row[k] = _scalar(v)
    for k, v in (rec.get("params") or {}).items():
        row[f"param.{k}"] = _scalar(v)
    for name in LATENCY_FIELDS:
        stats = rec.get(name) or {}
        for s in LATENCY_STATS:
            row[f"{name}_{s}"] = stats.get(s) if isinstance(stats, dict) else None
    base = rec.get("baselines") or {}
    row["baseline_device_idle_w"] = base.get("device_idle_w")
    row["baseline_loaded_idle_w"] = base.get("loaded_idle_w")
    warm = rec.get("warmup") or {}
    row["warmup_passes"] = warm.get("passes")
    row["warmup_converged"] = warm.get("converged")
    row["warmup_cv"] = warm.get("cv")
    devs = rec.get("devices") or []
    energies = [d.get("energy_j") for d in devs if isinstance(d, dict)]
    known = [float(e) for e in energies if e is not None]
    row["n_devices"] = len(devs)
    row["device_names"] = ";".join(str(d.get("name") or d.get("kind") or "?") for d in devs)
    row["device_energy_sources"] = ";".join(sorted({str(d.get("energy_source")) for d in devs
                                                   if d.get("energy_source")}))
    row["device_energy_j_sum"] = sum(known) if known else None
    row["device_energy_j_max"] = max(known) if known else None
    row["device_energy_j_min"] = min(known) if known else None
    for i, e in enumerate(energies):
        row[f"device{i}_energy_j"] = e
    flags = rec.get("flags") or []
    codes = [str(f.get("code")) for f in flags if isinstance(f, dict)]
    row["flags"] = ";".join(codes)
    row["n_flags"] = len(codes)
    _served_columns(rec, row)
    for prefix, key in (("model", "model"), ("env", "environment"), ("node", "node")):
        for k, v in (rec.get(key) or {}).items():
            if v is None or isinstance(v, (bool, int, float, str)):
                row[f"{prefix}.{k}"] = v
    return row


def _normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of mixed Python types become text, so Parquet and CSV write them the same way."""
    for c in df.columns:
        if df[c].dtype != object:
            continue
        kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if kinds and not kinds <= {str} and not kinds <= {bool} and not kinds <= {int, float}:
            df[c] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                     for v in df[c]]
        elif kinds and kinds <= {int, float}:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def load_records(study_dir: Path) -> list[dict[str, Any]]:
    return [r for r in StudyStore(Path(study_dir)).iter_records() if "trial_id" in r]


def load_results(study_dir: Path | str) -> pd.DataFrame:
    """The trial table of a study directory: one row per trial record (ok and failed).

    Rows are ordered by round, then start time, then trial id. An empty study gives an
    empty frame with the identity columns.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"{study_dir}: no such study directory")
    rows = [flatten_record(r) for r in load_records(study_dir)]
    if not rows:
        return pd.DataFrame(columns=ID_COLUMNS)
    df = pd.DataFrame(rows)
    for c in ID_COLUMNS:
        if c not in df.columns:
            df[c] = None
    sort = [c for c in ("round", "started_at", "trial_id") if c in df.columns]
    df = df.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
    front = ID_COLUMNS + sorted(c for c in df.columns if c.startswith("param."))
    df = df[front + [c for c in df.columns if c not in front]]
    return _normalise_columns(df)


def write_tables(study_dir: Path | str, trials: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write ``results.parquet`` and ``results.csv`` atomically; returns both paths."""
    study_dir = Path(study_dir)
    df = load_results(study_dir) if trials is None else trials
    pq = study_dir / "results.parquet"
    csv = study_dir / "results.csv"
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(pq, buf.getvalue())
    atomic_write_bytes(csv, df.to_csv(index=False).encode())
    return pq, csv
