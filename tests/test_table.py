"""The trial table (results/table.py), and ``make_study``: a study directory built from real records.

``make_study`` writes what the runner writes (plan.json, study.yaml, manifest.json,
trials/<id>.json via ``TrialRecord(...).model_dump()`` and ``atomic_write_json``, and
timeseries/<id>.parquet), with known multiplicative effects so analysis tests can check
that they are recovered. Other test modules import it.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from joulebench.results.schema import (Baselines, DeviceRecord, LatencyStats, QualityFlagRecord, TrialRecord,
                                       WarmupRecord)
from joulebench.results.store import atomic_write_json
from joulebench.results.table import load_results, write_tables

BATCH = [1, 4, 16]
DTYPE = ["float32", "bfloat16"]
# true effects on J/output-token: batch 16 is 12x cheaper than batch 1, bf16 is 1.5x cheaper than fp32
BATCH_FACTOR = {1: 1.0, 4: 1 / 3.5, 16: 1 / 12}
DTYPE_FACTOR = {"float32": 1.0, "bfloat16": 1 / 1.5}
BASE_J_PER_TOKEN = 2.0


def config_id(params: dict) -> str:
    return hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:10]


def make_study(root: Path, *, energy: bool = True, repeats: int = 3, failed: bool = True, flags: bool = True,
               timeline: bool = True, outlier: bool = True, noise: float = 0.04, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    study = root / "study"
    (study / "trials").mkdir(parents=True)
    (study / "timeseries").mkdir()
    axes = {"batch_size": BATCH, "dtype": DTYPE}
    (study / "study.yaml").write_text(yaml.safe_dump({
        "name": "fixture", "model": "synthetic:smollm2-135m", "backend": "transformers",
        "sweep": axes, "repeats": {"min": repeats, "max": repeats, "ci_target": 0.02},
        "measurement": {"min_window_s": 0.5}}))
    configs, trials = [], []
    t_now = 1.7e9
    for bs in BATCH:
        for dt in DTYPE:
            params = {"model": "synthetic:smollm2-135m", "backend": "transformers", "dtype": dt,
                      "batch_size": bs, "max_output_tokens": 16}
            cid = config_id(params)
            configs.append({"config_id": cid, "params": params})
            for rep in range(repeats):
                tid = f"{cid}-r{rep}"
                trials.append({"trial_id": tid, "config_id": cid, "repeat": rep, "params": params})
                if failed and bs == 16 and dt == "float32" and rep == repeats - 1:
                    rec = TrialRecord(trial_id=tid, config_id=cid, study="fixture", params=params, repeat=rep,
                                      round=rep, status="failed", error="RuntimeError: out of memory (fixture)",
                                      error_kind="error", started_at=t_now, finished_at=t_now + 1)
                    atomic_write_json(study / "trials" / f"{tid}.json", rec.model_dump())
                    t_now += 2
                    continue
                jpt = BASE_J_PER_TOKEN * BATCH_FACTOR[bs] * DTYPE_FACTOR[dt] * math.exp(rng.normal(0, noise))
                if outlier and bs == 1 and dt == "bfloat16" and rep == 0:
                    jpt *= 3.0
                power_w = 150.0 + 3 * bs + rng.normal(0, 1)
                tok_s = power_w / jpt
                duration = 2.0
                out_tokens = int(round(tok_s * duration))
                e = power_w * duration if energy else None
                rec = TrialRecord(
                    trial_id=tid, config_id=cid, study="fixture", params=params, repeat=rep, round=rep,
                    started_at=t_now, finished_at=t_now + duration,
                    energy_j=e, energy_source="nvml-counter" if energy else None,
                    energy_above_device_idle_j=(e - 72 * duration) if energy else None,
                    energy_above_loaded_idle_j=(e - 128 * duration) if energy else None,
                    energy_per_output_token_j=(e / out_tokens) if energy else None,
                    energy_above_loaded_idle_per_output_token_j=((e - 128 * duration) / out_tokens) if energy else None,
                    mean_power_w=power_w if energy else None,
                    output_tokens=out_tokens, input_tokens=32 * bs, requests=bs, duration_s=duration,
                    throughput_tok_s=out_tokens / duration,
                    ttft_s=LatencyStats(median=0.01 * bs * (1 + rng.normal(0, 0.02)), p90=0.012 * bs,
                                        p99=0.013 * bs, mean=0.01 * bs, n=bs),
                    itl_s=LatencyStats(median=0.02 + 0.001 * bs, p90=0.025, p99=0.03, mean=0.021, n=15 * bs),
                    devices=[DeviceRecord(index=0, uuid="GPU-fixture-0", name="NVIDIA H100 80GB HBM3",
                                          energy_j=e, energy_source="nvml-counter" if energy else None)]
                    if energy else [DeviceRecord(kind="cpu-package", name="cpu")],
                    baselines=Baselines(device_idle_w=72.0, loaded_idle_w=128.0) if energy else Baselines(),
                    warmup=WarmupRecord(passes=3, converged=True, cv=0.01),
                    flags=([QualityFlagRecord(code="energy_unavailable",
                                              advice="No energy counter here: run on a GPU machine for energy.")]
                           if not energy else [])
                          + ([QualityFlagRecord(code="short_window",
                                                advice="Raise measurement.min_window_s to at least 10 s.",
                                                detail=f"window {duration} s < 10 s")]
                             if flags and rep == 1 else []),
                    environment={"python": "3.11.2", "torch": "2.13.0", "tool_version": "0.1.0",
                                 "hostname": "fixture-host"},
                    model={"source": "synthetic", "synthetic_weights": True},
                    timeseries=f"timeseries/{tid}.parquet" if timeline else None,
                )
                atomic_write_json(study / "trials" / f"{tid}.json", rec.model_dump())
                if timeline:
                    t = t_now + np.arange(0, duration, 0.1)
                    pd.DataFrame({"t_s": t, "device_uuid": "GPU-fixture-0",
                                  "power_w": power_w + rng.normal(0, 2, len(t)),
                                  "temperature_c": 40 + np.linspace(0, 2, len(t)),
                                  "sm_clock_mhz": 1980.0}).to_parquet(study / "timeseries" / f"{tid}.parquet")
                t_now += duration + 1
    atomic_write_json(study / "plan.json", {"study": "fixture", "axes": axes, "configs": configs,
                                            "trials": trials})
    atomic_write_json(study / "manifest.json", {"status": "finished", "study_hash": "abc123"})
    return study


def test_load_results_flattens_one_row_per_trial(tmp_path):
    study = make_study(tmp_path)
    df = load_results(study)
    assert len(df) == 6 * 3
    assert set(df["status"]) == {"ok", "failed"}
    assert (df["status"] == "failed").sum() == 1
    for col in ("param.batch_size", "param.dtype", "param.model", "ttft_s_median", "ttft_s_p90", "itl_s_p99",
                "energy_per_output_token_j", "throughput_tok_s", "flags", "n_flags", "device_energy_j_sum",
                "device0_energy_j", "baseline_loaded_idle_w", "warmup_passes", "env.torch", "model.source"):
        assert col in df.columns, col
    assert df["param.batch_size"].dtype.kind == "i"
    ok = df[df["status"] == "ok"]
    assert np.allclose(ok["device_energy_j_sum"], ok["energy_j"])
    flagged = df[df["n_flags"] > 0]
    assert len(flagged) == 6 and set(flagged["flags"]) == {"short_window"}   # repeat 1 of each config
    failed = df[df["status"] == "failed"].iloc[0]
    assert "out of memory" in failed["error"] and pd.isna(failed["energy_j"])


def test_load_results_energy_null_and_joined_flags(tmp_path):
    df = load_results(make_study(tmp_path, energy=False))
    ok = df[df["status"] == "ok"]
    assert ok["energy_per_output_token_j"].isna().all()
    assert ok["throughput_tok_s"].notna().all()
    two = ok[ok["n_flags"] == 2]
    assert len(two) == 6 and set(two["flags"]) == {"energy_unavailable;short_window"}


def test_write_tables_round_trip(tmp_path):
    study = make_study(tmp_path)
    pq, csv = write_tables(study)
    a = pd.read_parquet(pq)
    b = pd.read_csv(csv)
    assert len(a) == len(b) == 18
    assert list(a.columns) == list(b.columns)
    assert np.allclose(a["throughput_tok_s"], b["throughput_tok_s"], equal_nan=True)


def test_empty_and_missing_study(tmp_path):
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    df = load_results(tmp_path / "empty")
    assert df.empty and "trial_id" in df.columns
    with pytest.raises(FileNotFoundError, match="no such study directory"):
        load_results(tmp_path / "nope")


def test_public_api_load_results(tmp_path):
    import joulebench

    df = joulebench.load_results(make_study(tmp_path, repeats=2, failed=False))
    assert len(df) == 12 and (df["status"] == "ok").all()
