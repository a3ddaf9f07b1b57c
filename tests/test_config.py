"""Study validation: good and bad inputs, messages that name file, YAML path and a fix."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joulebench.config import load_study, parse_study_text
from joulebench.errors import EXIT_INVALID, JoulebenchError, StudyError
from joulebench.study.plan import build_plan

from .conftest import run_cli, tiny_study


def test_minimal_study_gets_defaults(write_study):
    loaded = load_study(write_study({"name": "m", "model": "synthetic:tiny-llama"}))
    c = loaded.config
    assert c.backend == "transformers"
    assert c.repeats.min == 3 and c.repeats.max == 10 and c.repeats.ci_target == 0.02
    assert c.repeats.metric == "energy_per_output_token_j"
    assert c.measurement.min_window_s == 10
    assert c.runner == "auto"


def test_fixed_repeats_integer_means_min_equals_max(write_study):
    c = load_study(write_study(tiny_study(repeats=4))).config
    assert (c.repeats.min, c.repeats.max, c.repeats.ci_target) == (4, 4, None)


def test_unknown_top_level_key_names_file_path_line_and_suggestion(write_study):
    p = write_study({**tiny_study(), "repeets": 3})
    with pytest.raises(StudyError) as ei:
        load_study(p)
    text = str(ei.value)
    assert str(p) in text
    assert "repeets (line" in text
    assert "did you mean 'repeats'" in text


def test_nested_wrong_type_names_nested_path(write_study):
    s = tiny_study()
    s["workload"]["prompts"] = "many"
    with pytest.raises(StudyError) as ei:
        load_study(write_study(s))
    assert "workload.prompts" in str(ei.value)


def test_bad_runner_literal_suggests(write_study):
    with pytest.raises(StudyError) as ei:
        load_study(write_study(tiny_study(runner="dokcer")))
    assert "did you mean 'docker'" in str(ei.value)


def test_unknown_sweep_axis_is_rejected_at_plan_time_with_suggestion(write_study):
    s = tiny_study(sweep={"batch_szie": [1, 2]})
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(s)))
    text = str(ei.value)
    assert "sweep.batch_szie" in text and "did you mean 'batch_size'" in text


def test_bad_engine_value_names_the_sweep_entry(write_study):
    s = tiny_study(sweep={"dtype": ["float32", "float8"]})
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(s)))
    assert "sweep.dtype[1]" in str(ei.value)


def test_engine_parameter_of_another_engine_is_rejected(write_study):
    s = tiny_study(engine={"dtype": "float32", "gpu_memory_utilization": 0.9})
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(s)))
    assert "engine.gpu_memory_utilization" in str(ei.value)
    assert "not a parameter of backend 'transformers'" in str(ei.value)


def test_impossible_combination_rejected_or_skipped(write_study):
    s = tiny_study(sweep={"quantization": ["none", "bnb-4bit"]})
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(s)))
    assert "impossible combination" in str(ei.value) and "needs a CUDA device" in str(ei.value)
    s["runner_options"] = {"on_invalid": "skip"}
    plan = build_plan(load_study(write_study(s)))
    assert len(plan.configs) == 1 and len(plan.skipped) == 1


def test_unknown_synthetic_arch_suggests(write_study):
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(tiny_study(model="synthetic:llama-3.2-1bb"))))
    assert "did you mean 'llama-3.2-1b'" in str(ei.value)


def test_missing_model_file(write_study):
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(tiny_study(model="./nope/model.gguf"))))
    assert "does not exist" in str(ei.value)


@pytest.mark.parametrize("text, fragment", [
    ("name: [unclosed", "not valid YAML (line"),
    ("- a\n- b\n", "must be a mapping"),
    ("", "empty"),
    ("name: x\n", "model"),
    ("name: 'bad name!'\nmodel: synthetic:tiny-llama\n", "name"),
    ("name: x\nmodel: synthetic:tiny-llama\nrepeats: {min: 5, max: 2}\n", "max (2) is smaller than min (5)"),
    ("name: x\nmodel: synthetic:tiny-llama\nsweep: {batch_size: []}\n", "has no values"),
    ("name: x\nmodel: synthetic:tiny-llama\nrepeats: {metric: watts}\n", "repeats.metric"),
    ("name: x\nmodel: synthetic:tiny-llama\ndevice: gpu\n", "device"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
])
def test_bad_documents(text, fragment):
    with pytest.raises(StudyError) as ei:
        parse_study_text(text, file="s.yaml")
    assert fragment in str(ei.value)
    assert ei.value.exit_code == EXIT_INVALID


def test_cli_invalid_study_exits_2_without_traceback(write_study):
    p = write_study({**tiny_study(), "sweeep": {"batch_size": [1]}})
    r = run_cli("plan", p)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "did you mean 'sweep'" in r.stderr


def test_cli_missing_file_exits_2():
    r = run_cli("plan", "does-not-exist.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                     st.text(max_size=12))
_keys = st.sampled_from(["name", "model", "backend", "device", "engine", "workload", "sweep", "repeats",
                         "measurement", "runner", "runner_options", "experiments", "seed", "dtype",
                         "batch_size", "prompts", "min", "max", "ci_target", "min_window_s", "x"])
_docs = st.recursive(_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=6)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
def test_fuzzed_structures_never_raise_anything_but_study_errors(doc):
    text = yaml.safe_dump(doc)
    try:
        loaded = parse_study_text(text, file="fuzz.yaml")
        build_plan(loaded)
    except JoulebenchError as e:
        assert e.exit_code == EXIT_INVALID
        assert str(e)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzzed_text_never_raises_anything_but_study_errors(text):
    try:
        parse_study_text(text, file="fuzz.yaml")
    except StudyError as e:
        assert e.exit_code == EXIT_INVALID
