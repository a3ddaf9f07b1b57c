"""benchmarks/attribution_rules.py: rules compared on stored two-class windows (requests traces written here
in the worker's format; the window is one interval, so the figures follow from the token counts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from joulebench.backends.base import RequestResult
from joulebench.results.requests import requests_trace_path, write_requests_trace

from .conftest import load_benchmark

attribution_rules = load_benchmark("attribution_rules")

SHORT = {"name": "short", "input_tokens": 10, "output_tokens": 2}
LONG = {"name": "long", "input_tokens": 1000, "output_tokens": 2}


def _trial(study: Path, tid: str, classes: list[dict], energy_j: float, n: int = 4):
    per = [c for c in classes for _ in range(n // len(classes))]
    results = [RequestResult(index=i, input_tokens=c["input_tokens"], output_tokens=2, submit_s=0.0,
                             token_times_s=[0.1, 0.2], completed_s=0.25, request_class=c["name"])
               for i, c in enumerate(per)]
    write_requests_trace(results, study / requests_trace_path(tid), clock_offset_s=0.0, window_start_s=0.0,
                         window_end_s=1.0, window_energy_j=energy_j, device_uuids=["GPU-a"])
    rec = {"trial_id": tid, "status": "ok", "requests_trace": requests_trace_path(tid), "timeseries": None,
           "params": {"classes": [{**c, "share": 1.0 / len(classes)} for c in classes]},
           "per_request_energy": {"window_energy_j": energy_j, "requests": len(results)}}
    (study / "trials").mkdir(parents=True, exist_ok=True)
    (study / "trials" / f"{tid}.json").write_text(json.dumps(rec))


def test_rules_compared_on_a_two_class_study(tmp_path):
    # alone: short 10 J/request, long 50 J/request; the mix costs exactly their average (no excess)
    _trial(tmp_path, "s0", [SHORT], 40.0)
    _trial(tmp_path, "l0", [LONG], 200.0)
    _trial(tmp_path, "m0", [SHORT, LONG], 120.0)
    doc = attribution_rules.compare_rules(tmp_path, {"tokens": 0.0, "context": 1e-3})
    assert doc["trials"] == {"mix": 1, "short": 1, "long": 1}
    assert doc["mix_excess"] == pytest.approx(0.0)
    tok = doc["rules"]["tokens"]["classes"]
    # tokens rule, prefill weight 1: short = 10 + 2 units, long = 1000 + 2 units per request
    assert tok["short"]["mix_j_per_request"] == pytest.approx(120.0 / 2 * 12 / 1014)
    assert tok["long"]["mix_j_per_request"] == pytest.approx(120.0 / 2 * 1002 / 1014)
    ctx = doc["rules"]["context"]["classes"]
    # the decode token (position 1) of each request counts 1 + w x context x 4 requests decoding
    u_s, u_l = 11 + (1 + 1e-3 * 11 * 4), 1001 + (1 + 1e-3 * 1001 * 4)
    assert ctx["short"]["mix_j_per_request"] == pytest.approx(120.0 / 2 * u_s / (u_s + u_l))
    assert ctx["long"]["mix_j_per_request"] == pytest.approx(120.0 / 2 * u_l / (u_s + u_l))
    for res in doc["rules"].values():
        assert res["conservation_max_rel_error"] < 1e-12
        c = res["classes"]
        assert res["spread"] == pytest.approx(abs(c["short"]["ratio"] - c["long"]["ratio"]))


def test_a_study_without_both_sides_is_refused(tmp_path):
    _trial(tmp_path, "s0", [SHORT], 40.0)
    with pytest.raises(SystemExit, match="two-class mix"):
        attribution_rules.compare_rules(tmp_path, {"tokens": 0.0})
