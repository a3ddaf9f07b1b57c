"""A real vLLM study on CPU through the engine-environment runner: ``joulebench run`` starts the worker
with the vLLM environment's interpreter; offline and served modes; records on disk."""
from __future__ import annotations

import json

import pytest

from .conftest import FAST_MEASUREMENT, run_cli
from .test_vllm_backend import MODEL, require_engine

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def read_records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*.json"))]


def check_record(rec, *, n_out: int, prompts: int):
    assert rec["status"] == "ok", rec.get("error")
    assert rec["passes"] >= 1 and rec["requests"] == prompts * rec["passes"]
    if rec["params"]["mode"] == "served":
        # primary figures come from the steady state; the whole window keeps every token
        whole, steady = rec["whole_window"], rec["steady_state"]
        assert whole["output_tokens"] == n_out * rec["requests"]     # forced lengths, exactly
        assert steady["segments"] >= 1 and 0 < steady["output_tokens"] < whole["output_tokens"]
        assert rec["output_tokens"] == steady["output_tokens"]
        assert 0 < steady["duration_s"] < whole["duration_s"]
    else:
        assert rec["output_tokens"] == n_out * rec["requests"]       # forced lengths, exactly
        assert rec["steady_state"] is None
    assert rec["input_tokens"] > 0 and rec["throughput_tok_s"] > 0
    for key in ("ttft_s", "tpot_s", "latency_s"):
        assert rec[key]["n"] > 0 and rec[key]["median"] > 0, key
    # every request has TTFT < latency, so every quantile of TTFT is below the same quantile of latency
    for q in ("median", "p90", "p99"):
        assert rec["ttft_s"][q] < rec["latency_s"][q], q


def test_vllm_study_offline_and_served_through_engine_environment(write_study, tmp_path):
    py = require_engine("vllm")
    study = {
        "name": "vllm-e2e", "model": MODEL, "backend": "vllm",
        "engine": {"dtype": "bfloat16", "max_num_seqs": 4},
        "workload": {"dataset": "synthetic", "prompts": 6, "input_tokens": 8, "max_output_tokens": 8},
        "experiments": [{"mode": "offline", "batch_size": 3}, {"mode": "served", "concurrency": 2}],
        "repeats": 1, "measurement": FAST_MEASUREMENT, "runner": "process",
        "runner_options": {"environments": {"vllm": py}, "timeout_s": 900},
    }
    out = tmp_path / "out"
    proc = run_cli("run", write_study(study), "--out", out, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = read_records(out)
    assert len(records) == 2
    by_mode = {r["params"]["mode"]: r for r in records}
    for mode, rec in by_mode.items():
        check_record(rec, n_out=8, prompts=6)
        assert rec["params"]["backend"] == "vllm"
        assert rec["environment"], "engine environment versions missing"
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
