"""Served vLLM records from a real H100 (tests/fixtures/vllm/h100_served_records.json.gz, trimmed trial records
of benchmarks/vllm_gpu.py on 2026-12-07; the figures are in benchmarks/results/vllm-mlenergy-h100-2026-12-07-prefix-warm.json).
Conservation of the per-request attribution, the two-class comparison and ML.ENERGY's steady window, checked on
what the GPU produced rather than on made-up numbers."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from joulebench.analysis.attribution import compare_class_alone

REPO = Path(__file__).resolve().parents[1]
DOC = json.loads(gzip.decompress((REPO / "tests" / "fixtures" / "vllm" / "h100_served_records.json.gz").read_bytes()))
RESULT = json.loads((REPO / "benchmarks" / "results" / "vllm-mlenergy-h100-2026-12-07-prefix-warm.json").read_text())


def _classes(rec):
    return [c["name"] for c in rec["params"]["classes"]]


@pytest.mark.parametrize("rec", DOC["two_class"], ids=lambda r: r["trial_id"])
def test_attribution_conserves_the_window_energy_on_gpu_records(rec):
    pr = rec["per_request_energy"]
    assert pr["interval_source"] == "counter" and pr["intervals"] > 10
    assert pr["requests"] == rec["params"]["prompts"] == 256
    window = pr["window_energy_j"]
    assert window == pytest.approx(rec["devices"][0]["energy_j"], rel=1e-12)
    # per-request energies sum to the window's energy: as the record states it and from its parts
    assert abs(pr["conservation_rel_error"]) < 1e-9
    assert pr["energy_j"]["mean"] * pr["energy_j"]["n"] == pytest.approx(window, rel=1e-9)
    by_class = pr["by_class"]
    assert sorted(by_class) == sorted(_classes(rec))
    assert sum(c["energy_j_mean"] * c["requests"] for c in by_class.values()) == pytest.approx(window, rel=1e-9)


def test_two_class_comparison_reproduces_the_committed_figures():
    mix = [r for r in DOC["two_class"] if len(_classes(r)) == 2]
    got = {}
    for cls in ("short", "long"):
        alone = [r for r in DOC["two_class"] if _classes(r) == [cls]]
        got[cls] = compare_class_alone(mix, alone, cls)
        want = RESULT["per_request"]["two_class_agreement"]["classes"][cls]
        assert got[cls].mix_trials == got[cls].alone_trials == 3
        assert got[cls].ratio == pytest.approx(want["ratio"], rel=1e-9)
    # what the H100 showed: the token rule charges the short class in the mix about a third more than alone,
    # the long class within 10 %
    assert 1.3 < got["short"].ratio < 1.45
    assert 1.0 < got["long"].ratio < 1.1


@pytest.mark.parametrize("rec", DOC["mlenergy_points"], ids=lambda r: r["trial_id"])
def test_steady_window_is_mlenergys_and_full(rec):
    b = rec["params"]["max_num_seqs"]
    st = rec["steady_state"]
    assert st["batch"] == b and "(N-B)-th completion" in st["definition"]
    # the record's J/output-token is the steady window's, a part of the whole window
    assert rec["energy_per_output_token_j"] == pytest.approx(st["energy_j"] / st["output_tokens"], rel=1e-12)
    assert st["energy_j"] < rec["whole_window"]["energy_j"] and st["duration_s"] < rec["whole_window"]["duration_s"]
    # the batch stayed full: no low-occupancy flag, and the running batch is within 1 % of max_num_seqs
    assert st["running_batch_mean"] > 0.99 * b and "low_batch_occupancy" not in rec["flags"]
