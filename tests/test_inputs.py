"""The input-length policy is explicit: plan and report show the input lengths and the truncation in force."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from joulebench.study.inputs import input_policy

from .conftest import run_cli, tiny_study

AES = Path(__file__).resolve().parents[2] / "shared" / "data" / "aienergyscore_text_generation.jsonl"


def _prompts(tmp_path: Path, texts: list[str]) -> Path:
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return p


def test_synthetic_prompts_say_their_exact_length():
    pol = input_policy({"dataset": "synthetic", "prompts": 4, "input_tokens": 32, "model": "synthetic:tiny-llama"},
                       None)
    assert pol.describe() == "inputs: synthetic, 4 prompts a pass; synthetic prompts of exactly 32 tokens"


def test_a_prompts_file_gives_its_length_distribution_and_truncation(tmp_path):
    path = _prompts(tmp_path, ["a" * 10, "b" * 20, "c" * 300])
    params = {"dataset": str(path), "prompts": 3, "model": "synthetic:tiny-llama"}
    pol = input_policy(params, None)
    assert pol.unit == "tokens" and sorted(pol.lengths) == [10, 20, 300]   # byte-level: one token per byte
    assert "10-300 tokens (median 20" in pol.describe() and "not truncated" in pol.describe()
    cut = input_policy({**params, "max_input_tokens": 64}, None)
    assert "truncated to 64 tokens (workload.max_input_tokens): 1 of 3 prompts cut" in cut.describe()
    # a model whose tokenizer is not known without its engine: characters, said so
    hub = input_policy({**params, "model": "HuggingFaceTB/SmolLM2-135M"}, None)
    assert hub.unit == "characters" and "10-300 characters" in hub.describe()


@pytest.mark.skipif(not AES.is_file(), reason="AI Energy Score prompts not available here")
def test_ai_energy_score_prompts_are_long_and_say_so():
    pol = input_policy({"dataset": "aienergyscore", "dataset_path": str(AES), "prompts": 1000,
                        "model": "synthetic:smollm2-135m"}, None)
    assert max(pol.lengths) > 2000 and "not truncated" in pol.describe()


def test_plan_and_report_show_the_policy(write_study, tmp_path):
    path = _prompts(tmp_path, ["hello there", "a longer prompt than the first one"])
    study = tiny_study("inputs", workload={"dataset": str(path), "prompts": 2, "max_output_tokens": 2,
                                           "max_input_tokens": 16})
    sp = write_study(study)
    plan = run_cli("plan", sp, timeout=300, env={"COLUMNS": "250"})
    assert plan.returncode == 0, plan.stderr
    assert "inputs: " in plan.stdout and "truncated to 16 tokens (workload.max_input_tokens): 1 of 2" in plan.stdout
    out = tmp_path / "out"
    run = run_cli("run", sp, "--out", out, "--quiet", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (out / "report.html").read_text()
    assert "<b>Inputs</b>" in html and "truncated to 16 tokens" in html
    assert "Measured input tokens per request" in html
