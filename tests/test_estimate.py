"""The plan's time estimate: whole passes, stated assumptions, and earlier runs' measured trial times."""
from __future__ import annotations

import json

import pytest

from joulebench.config import load_study
from joulebench.study.estimate import (TRIAL_OVERHEAD_S, earlier_runs, estimate_study, measured_trial_seconds,
                                       pass_seconds, step_seconds, trial_seconds)
from joulebench.study.plan import build_plan, trial_id_for

from .conftest import run_cli, tiny_study


def test_a_pass_is_sequential_batches_of_decode_steps():
    p = {"backend": "transformers", "prompts": 8, "max_output_tokens": 256, "batch_size": 1}
    assert pass_seconds(p, 0.025) == pytest.approx(8 * 256 * 0.025)       # the 1B batch-1 case: 51 s a pass
    assert pass_seconds({**p, "batch_size": 8}, 0.025) == pytest.approx(256 * 0.025)
    # vLLM: batch_size caps the requests in flight; unset, the scheduler takes the whole workload at once
    assert pass_seconds({**p, "backend": "vllm", "batch_size": 4}, 0.01) == pytest.approx(2 * 256 * 0.01)
    assert pass_seconds({**p, "backend": "vllm", "batch_size": None}, 0.01) == pytest.approx(256 * 0.01)


def test_a_window_is_whole_passes():
    # 3 s minimum window, 2 s passes: the window is 2 passes (4 s), after 2 warm-up passes
    assert trial_seconds(2.0, 3.0, 2) == pytest.approx(TRIAL_OVERHEAD_S + 4.0 + 4.0)
    # passes much shorter than the window: the window is the minimum
    assert trial_seconds(0.01, 3.0, 2) == pytest.approx(TRIAL_OVERHEAD_S + 0.02 + 3.0, rel=1e-3)
    # a pass longer than the window: one pass
    assert trial_seconds(50.0, 3.0, 2) == pytest.approx(TRIAL_OVERHEAD_S + 150.0)


def test_cpu_steps_grow_with_the_model():
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    big = {**small, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32}
    assert step_seconds("transformers", False, big) > 10 * step_seconds("transformers", False, small)
    assert step_seconds("transformers", True, big) == step_seconds("transformers", True, small)


def test_batch1_estimate_is_far_above_the_old_floor(write_study):
    study = tiny_study("b1", model="synthetic:llama-3.2-1b", device="cpu",
                       workload={"dataset": "synthetic", "prompts": 8, "input_tokens": 32, "max_output_tokens": 256},
                       sweep={"batch_size": [1, 16]}, repeats=2)
    plan = build_plan(load_study(write_study(study)))
    est = estimate_study(plan, on_gpu=True, model_config=None)
    # batch 1: 8 x 256 steps at 25 ms = 51 s a pass; a window of 1 whole pass (+ a one-batch warm-up), 2 rounds
    assert est.likely_s > 2 * 51 + 2 * 2 * 256 * 0.025
    assert est.low_s < est.likely_s and "decode step ~25 ms (assumed" in est.assumptions[0]
    assert "no earlier run" in est.describe()


def test_measured_trial_times_of_earlier_runs_replace_the_guess(write_study, tmp_path):
    study = tiny_study("hist", sweep={"batch_size": [1, 2]}, repeats=2)
    plan = build_plan(load_study(write_study(study)))
    root = tmp_path / "results"
    d = root / "hist-20261206" / "trials"
    d.mkdir(parents=True)
    (d.parent / "manifest.json").write_text(json.dumps({"study": "hist"}))
    for c, secs in zip(plan.configs, (100.0, 300.0)):
        for r in range(2):
            (d / f"{trial_id_for(c.config_id, r)}.json").write_text(json.dumps(
                {"config_id": c.config_id, "status": "ok", "started_at": 1000.0, "finished_at": 1000.0 + secs}))
    (root / "other" ).mkdir()
    (root / "other" / "manifest.json").write_text(json.dumps({"study": "not-this-one"}))
    runs = earlier_runs("hist", [root])
    assert runs == [d.parent]
    history = measured_trial_seconds(runs)
    assert sorted(history.values()) == [100.0, 300.0]
    est = estimate_study(plan, on_gpu=False, model_config=None, history=history)
    assert est.measured_configs == 2 and "measured by an earlier run for 2 of 2" in est.describe()
    assert est.likely_s >= 2 * (100.0 + 300.0)


def test_plan_prints_the_estimate_and_its_assumptions(write_study):
    proc = run_cli("plan", write_study(tiny_study("p")), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "estimated time: about" in proc.stdout and "assumes: decode step" in proc.stdout


def test_adaptive_repeats_give_a_range_and_llamacpp_is_sequential(write_study):
    study = tiny_study("adaptive", repeats={"min": 3, "max": 5, "ci_target": 0.05})
    est = estimate_study(build_plan(load_study(write_study(study))), on_gpu=False, model_config=None)
    assert est.rounds == (3, 5) and est.up_to_s > est.likely_s
    assert "for 3 round(s); up to" in est.describe() and "all 5 rounds" in est.describe()
    fixed = estimate_study(build_plan(load_study(write_study(tiny_study("fixed", repeats=2)))), on_gpu=False,
                           model_config=None)
    assert fixed.up_to_s is None and "up to" not in fixed.describe()
    p = {"backend": "llamacpp", "prompts": 12, "max_output_tokens": 32, "concurrency": 4}
    assert pass_seconds(p, 0.01) == pytest.approx(12 * 32 * 0.01)


def test_transformers_warms_one_batch_the_other_engines_the_workload():
    from joulebench.study.estimate import warmup_pass_seconds

    p = {"backend": "transformers", "prompts": 8, "max_output_tokens": 64, "batch_size": 1}
    assert warmup_pass_seconds(p, 0.05) == pytest.approx(64 * 0.05)            # one batch
    assert pass_seconds(p, 0.05) == pytest.approx(8 * 64 * 0.05)               # the window's pass: all 8
    assert trial_seconds(25.6, 3.0, 2, 3.2) == pytest.approx(TRIAL_OVERHEAD_S + 6.4 + 25.6)
    v = {**p, "backend": "vllm"}
    assert warmup_pass_seconds(v, 0.05) == pass_seconds(v, 0.05)
