"""`backend` as a sweep axis: engine.<backend> sections, and the vLLM-vs-SGLang GPU study's plan (planning
needs no engine, so it runs here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from joulebench.config import load_study
from joulebench.errors import StudyError
from joulebench.study.plan import build_plan

from .conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "engines-gpu.yaml"


def _study(**engine):
    return {"name": "s", "model": "synthetic:tiny-llama", "backend": "vllm",
            "engine": {"mode": "served", "max_num_seqs": 16, **engine},
            "workload": {"dataset": "synthetic", "prompts": 4, "input_tokens": 8, "max_output_tokens": 4},
            "sweep": {"backend": ["vllm", "sglang"], "concurrency": [1, 4]}, "repeats": 1, "runner": "process"}


def test_backend_sections_apply_to_their_backend_only(write_study):
    plan = build_plan(load_study(write_study(_study(
        vllm={"engine_args": {"load_format": "dummy"}},
        sglang={"attention_backend": "triton", "load_format": "dummy", "max_num_seqs": 32}))))
    by_backend = {}
    for c in plan.configs:
        by_backend.setdefault(c.params["backend"], []).append(c)
    assert {b: len(cs) for b, cs in by_backend.items()} == {"vllm": 2, "sglang": 2}
    for c in by_backend["vllm"]:
        assert c.params["engine_args"] == {"load_format": "dummy"} and "attention_backend" not in c.params
        assert c.params["max_num_seqs"] == 16
    for c in by_backend["sglang"]:
        assert c.params["attention_backend"] == "triton" and c.params["load_format"] == "dummy"
        assert c.params["max_num_seqs"] == 32          # the section wins over the shared engine block
        assert c.params["engine_args"] == {}
    # one load group (server) per backend: concurrency is a runtime parameter
    assert len({c.load_group for c in plan.configs}) == 2
    assert plan.axes == {"backend": ["vllm", "sglang"], "concurrency": [1, 4]}


def test_a_parameter_only_one_engine_has_must_go_in_its_section(write_study):
    with pytest.raises(StudyError) as exc:
        build_plan(load_study(write_study(_study(attention_backend="triton"))))
    text = str(exc.value)
    assert "'attention_backend' is not a parameter of backend 'vllm'" in text and "engine.attention_backend" in text


def test_a_bad_value_in_a_section_names_its_yaml_path(write_study):
    with pytest.raises(StudyError) as exc:
        build_plan(load_study(write_study(_study(sglang={"attention_backend": "fa9"}))))
    text = str(exc.value)
    assert "engine.sglang.attention_backend" in text and "triton" in text   # the path, and the choices


def test_workload_keys_do_not_belong_in_a_section(write_study):
    with pytest.raises(StudyError, match="engine.sglang.prompts"):
        build_plan(load_study(write_study(_study(sglang={"prompts": 3}))))


def test_engines_gpu_study_plans_here():
    plan = build_plan(load_study(STUDY))
    assert plan.axes == {"backend": ["vllm", "sglang"]}
    assert len(plan.configs) == 6 and plan.min_repeats == 3
    assert len({c.load_group for c in plan.configs}) == 2
    # three load levels per engine, each with 2B or more requests per pass (a steady window)
    levels = sorted({(c.params["concurrency"], c.params["prompts"]) for c in plan.configs})
    assert levels == [(8, 32), (64, 192), (256, 768)]
    assert all(n >= 2 * min(conc, c.params["max_num_seqs"]) for conc, n in levels for c in plan.configs)
    from .test_engines_compare import engines_compare
    assert engines_compare.experiment_levels(plan.to_json()["configs"]) == ["concurrency", "prompts"]
    for c in plan.configs:
        p = c.params
        assert p["model"] == "synthetic:llama-3.1-8b" and p["dtype"] == "bfloat16" and p["mode"] == "served"
        assert p["dataset"] == "aienergyscore" and p["force_output_tokens"] is True
        assert p["max_num_seqs"] == 256 and p["enable_prefix_caching"] is False
        if p["backend"] == "sglang":
            assert p["load_format"] == "dummy" and p["attention_backend"] == "triton"
            assert p["sampling_backend"] == "pytorch" and p["grammar_backend"] == "none"
        else:
            assert p["engine_args"] == {"load_format": "dummy"}


def test_engines_gpu_study_through_the_cli(tmp_path):
    r = run_cli("plan", STUDY, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    assert doc["counts"]["configs"] == 6 and doc["counts"]["load_groups"] == 2
    assert sorted({c["params"]["backend"] for c in doc["configs"]}) == ["sglang", "vllm"]
