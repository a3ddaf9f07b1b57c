"""benchmarks/engines_compare.py: the issue's comparison document from a trial table (pure part)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
engines_compare = load_benchmark("engines_compare")


def _rows():
    rows = []
    for backend, base in (("vllm", 0.10), ("sglang", 0.08)):
        for conc, scale in ((8, 3.0), (256, 1.0)):
            for r, noise in enumerate((-0.01, 0.0, 0.01)):
                j = base * scale * (1 + noise)
                rows.append({"config_id": f"{backend}-{conc}", "trial_id": f"{backend}-{conc}-r{r}", "status": "ok",
                             "param.backend": backend, "param.concurrency": conc,
                             "energy_per_output_token_j": j, "throughput_tok_s": 1000.0 / scale,
                             "ttft_s_median": 0.05 * r + 0.1, "tpot_s_median": 0.02, "mean_power_w": 400.0 + r})
    rows.append({"config_id": "sglang-8", "trial_id": "sglang-8-r3", "status": "failed", "param.backend": "sglang",
                 "param.concurrency": 8})
    return pd.DataFrame(rows)


def test_comparison_document():
    doc = engines_compare.compare(_rows(), ["backend", "concurrency"], gpu="NVIDIA H100 80GB HBM3",
                                  versions={"vllm": "0.26.0", "sglang": "0.5.17"})
    assert doc["gpu"] == "NVIDIA H100 80GB HBM3" and doc["engine_versions"]["sglang"] == "0.5.17"
    assert set(doc["engines"]) == {"vllm", "sglang"}
    sg = doc["engines"]["sglang"]
    assert [r["level"] for r in sg] == [{"concurrency": 8}, {"concurrency": 256}]
    low = sg[0]
    assert low["repeats"] == 3 and low["failed"] == 1
    assert math.isclose(low["j_per_output_token_mean"], 0.24)
    lo, hi = low["ci95"]
    assert lo < 0.24 < hi and hi - lo < 0.03
    assert math.isclose(low["throughput_tok_s"], 1000 / 3) and math.isclose(low["ttft_s_median"], 0.15)
    assert low["tpot_s_median"] == 0.02 and math.isclose(low["window_power_w_mean"], 401.0)
    assert [w["fewest_j_per_output_token"] for w in doc["winner_by_level"]] == ["sglang", "sglang"]
    assert math.isclose(doc["winner_by_level"][0]["ratio_to_next"], 0.10 / 0.08)


def test_reads_a_real_study_directory(tmp_path):
    import json
    import shutil

    study = tmp_path / "study"
    shutil.copytree(REPO / "tests" / "fixtures" / "previous_release" / "study", study)
    out = tmp_path / "cmp.json"
    assert engines_compare.main([str(study), "--out", str(out), "--version", "sglang=0.5.17"]) == 0
    doc = json.loads(out.read_text())
    assert doc["engine_versions"]["sglang"] == "0.5.17" and "transformers" in doc["engine_versions"]
    rows = [r for rs in doc["engines"].values() for r in rs]
    # a CPU study without an energy meter: tokens/s, and no J/token rather than a made-up one
    assert rows and all(r["repeats"] >= 1 and r["throughput_tok_s"] > 0 for r in rows)
    assert all(r["j_per_output_token_mean"] is None and r["ci95"] == [None, None] for r in rows)
