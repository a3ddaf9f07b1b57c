"""A whole study on a real GPU: worker reuse across rounds, one sampler per worker, real counters.

The checks that only a real GPU can make: our own long-lived worker holds GPU memory between rounds
and must count as ours (busy-GPU gate, pre-flight), the records meter exactly that GPU with the
hardware counter, and each window gets its own 10 Hz timeline from the worker's one sampler process.
"""
from __future__ import annotations

import json
import pandas as pd
import pytest

from ..conftest import run_cli

pytestmark = pytest.mark.gpu


def test_study_reuses_one_worker_across_rounds_on_the_gpu(tmp_path, torch_cuda, write_study):
    if torch_cuda.cuda.is_initialized():
        pytest.skip("this pytest process holds a CUDA context (another GPU test ran first), which a study must "
                    "treat as another user: run this file on its own (benchmarks/gpu_session.sh does)")
    study = {
        "name": "gpu-reuse", "model": "synthetic:smollm2-135m", "backend": "transformers", "device": "cuda:0",
        "engine": {"dtype": "bfloat16"},
        "workload": {"dataset": "synthetic", "prompts": 8, "input_tokens": 32, "max_output_tokens": 16},
        "sweep": {"batch_size": [4, 8]}, "repeats": 3, "runner": "process",
        "measurement": {"min_window_s": 2, "device_idle_s": 3, "loaded_idle_s": 2,
                        "warmup": {"cv_target": 0.05, "k": 2, "min_passes": 2, "max_passes": 6}},
        # a false "busy" (our own worker's memory) would stop the study within seconds, not hang it
        "runner_options": {"busy_wait_s": 5, "busy_poll_s": 1},
    }
    out = tmp_path / "study"
    run = run_cli("run", write_study(study), "--out", out, "--quiet", "--no-report", timeout=300)
    print(run.stdout[-3000:], run.stderr[-3000:])
    recs = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*.json"))]
    for r in recs:
        print(r["trial_id"], r["round"], r["worker_id"], r["status"], r.get("error"),
              f"{r.get('throughput_tok_s') or 0:.0f} tok/s", r.get("energy_per_output_token_j"),
              r.get("warmup", {}).get("passes"), r.get("warmup", {}).get("converged_by"),
              [f["code"] for f in r.get("flags", [])])
    assert run.returncode == 0, [r.get("error") for r in recs]
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    assert len({r["worker_id"] for r in recs}) == 1                  # one worker, one load, three rounds
    for r in recs:
        assert r["energy_source"] == "nvml-counter" and r["energy_j"] > 0
        assert [d["index"] for d in r["devices"]] == [r["devices"][0]["index"]]
        codes = {f["code"] for f in r["flags"]}
        assert "foreign_process" not in codes and "residual_memory" not in codes
        assert r["baselines"]["loaded_idle_w"] > r["baselines"]["device_idle_w"] * 0.8
        assert (r["preflight"].get("busy_gpu") or {}).get("action") in (None, "run")
        ts = pd.read_parquet(out / r["timeseries"])
        t0, t1 = ts["t_s"].min(), ts["t_s"].max()
        assert len(ts) >= 10 and t1 - t0 <= r["duration_s"] + 1.0   # this window's rows only
        if r["round"] > 0:
            assert r["warmup"]["rewarm"]
