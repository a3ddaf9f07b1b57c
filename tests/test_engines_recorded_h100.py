"""vLLM against SGLang on a real H100 (studies/engines-gpu.yaml, 2026-12-07): the 18 trial records as the
workers wrote them, in tests/fixtures/engines/h100_vllm_sglang (no timelines). The comparison file made from
them is benchmarks/results/engines-gpu-h100-2026-12-07.json; the report's effects table is checked here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from joulebench.report.build import sweep_axes

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "fixtures" / "engines" / "h100_vllm_sglang"
RESULT = json.loads((REPO / "benchmarks" / "results" / "engines-gpu-h100-2026-12-07.json").read_text())
RECORDS = [json.loads(p.read_text()) for p in sorted((STUDY / "trials").glob("*.json"))]
engines_compare = load_benchmark("engines_compare")


def test_fixture_is_the_whole_study_on_one_h100():
    assert len(RECORDS) == 18 and all(r["status"] == "ok" for r in RECORDS)
    cells = {(r["params"]["backend"], r["params"]["concurrency"]) for r in RECORDS}
    assert cells == {(b, c) for b in ("vllm", "sglang") for c in (8, 64, 256)}
    for rec in RECORDS:
        assert rec["energy_source"] == "nvml-counter"
        assert rec["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
        command = rec["load_notes"]["command"]
        assert command[command.index("--load-format") + 1] == "dummy"
        version = rec["load_notes"].get("sglang_version") or rec["load_notes"].get("vllm_version")
        assert version == {"sglang": "0.5.17", "vllm": "0.26.0"}[rec["params"]["backend"]]


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r["trial_id"])
def test_per_request_energy_is_conserved_for_both_engines(rec):
    pre = rec["per_request_energy"]
    assert pre["interval_source"] == "counter" and pre["requests"] == rec["requests"]
    assert pre["conservation_rel_error"] < 1e-12


def test_sglang_scheduler_is_flagged_as_a_busy_host_process():
    # SGLang's scheduler polls: one core at 100 % on every trial; vLLM's processes stay under 90 %
    for rec in RECORDS:
        codes = {f["code"] for f in rec["flags"]}
        top = rec["host_cpu"]["busiest"][0]
        if rec["params"]["backend"] == "sglang":
            assert "host_cpu_busy" in codes and top["name"].startswith("sglang::schedul") and top["cpu_share"] > 0.95
        else:
            assert "host_cpu_busy" not in codes and top["cpu_share"] < 0.9


def test_comparison_file_is_what_engines_compare_makes_of_the_records(tmp_path):
    out = tmp_path / "cmp.json"
    assert engines_compare.main([str(STUDY), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["gpu"] == RESULT["gpu"] == "NVIDIA H100 80GB HBM3"
    for engine in ("vllm", "sglang"):
        made = {lv["level"]["concurrency"]: lv for lv in doc["engines"][engine]}
        kept = {lv["level"]["concurrency"]: lv for lv in RESULT["engines"][engine]}
        assert sorted(made) == sorted(kept) == [8, 64, 256]
        for c, lv in kept.items():
            assert made[c]["repeats"] == lv["repeats"] == 3
            for key in ("j_per_output_token_mean", "throughput_tok_s", "ttft_s_median", "tpot_s_median",
                        "window_power_w_mean"):
                assert made[c][key] == pytest.approx(lv[key], rel=1e-9)
            assert made[c]["ci95"] == pytest.approx(lv["ci95"], rel=1e-9)


def test_report_effects_hold_concurrency_fixed_and_show_where_the_engines_differ(tmp_path):
    study = tmp_path / "study"
    shutil.copytree(STUDY, study)
    from joulebench.report.build import build_model

    model = build_model(study)
    eff = model.effects
    axes = list(eff.axes["axis"])
    # concurrency comes from the study's experiments; prompts (one per concurrency) and each backend's own
    # engine arguments only restate an axis and are not fitted
    assert sorted(axes) == ["backend", "concurrency"]
    assert list(eff.interactions["axis"]) == ["concurrency x backend"]
    shares = dict(zip(eff.axes["axis"], eff.axes["eta_sq"]))
    assert shares["concurrency"] > 0.9 > shares["backend"]
    me = eff.main_effects.set_index(["axis", "level"])
    ratio = me.loc[("backend", "sglang")]
    # SGLang costs more per token than vLLM with concurrency held fixed (all of it at 256: the interaction)
    assert ratio["ratio_ci95_low"] > 1.0
    assert eff.interactions["p_value"].iloc[0] < 0.001
    per_cell = {(r["params"]["backend"], r["params"]["concurrency"]): [] for r in RECORDS}
    for r in RECORDS:
        per_cell[(r["params"]["backend"], r["params"]["concurrency"])].append(r["energy_per_output_token_j"])
    mean = {k: sum(v) / len(v) for k, v in per_cell.items()}
    assert mean[("sglang", 256)] / mean[("vllm", 256)] > 1.4
    assert abs(mean[("sglang", 8)] / mean[("vllm", 8)] - 1) < 0.05


def _trials(**cols):
    return pd.DataFrame({f"param.{k}": v for k, v in cols.items()})


def test_sweep_axes_adds_experiment_params_but_not_ones_that_restate_an_axis():
    trials = _trials(backend=["a", "b"] * 3, concurrency=[8, 8, 64, 64, 256, 256],
                     prompts=[32, 32, 192, 192, 768, 768], engine_args=["{x}", "{}"] * 3, dtype=["bf16"] * 6)
    axes, levels = sweep_axes({"axes": {"backend": ["a", "b"]}}, trials)
    assert axes == ["backend", "concurrency"] and levels == {"backend": ["a", "b"]}
    # a param that varies on its own is an axis even where it shares levels with another in some cells
    trials = _trials(backend=["a", "b"] * 2, concurrency=[8, 8, 64, 64], prompts=[32, 64, 64, 32])
    assert sweep_axes({"axes": {"backend": ["a", "b"]}}, trials)[0] == ["backend", "concurrency", "prompts"]
    # without a plan: every param that varies, as before
    assert sweep_axes({}, trials)[0] == ["backend", "concurrency", "prompts"]
