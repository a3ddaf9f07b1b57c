"""Study mistakes are found before any model loads (plan, and run before the first worker), exit 2,
and name the file, the line and the fix. Fuzzed with hypothesis: never a traceback."""
from __future__ import annotations

import json
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joulebench.config import load_study, parse_study_text
from joulebench.errors import EXIT_INVALID, JoulebenchError, StudyError
from joulebench.study.checks import MAX_CONFIGURATIONS, check_sweep_size
from joulebench.study.plan import build_plan

from .conftest import run_cli, tiny_study


def _plan_error(write_study, study: dict) -> str:
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(study)))
    return str(ei.value)


def test_a_key_given_twice_names_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: a\nmodel: synthetic:tiny-llama\nworkload:\n  prompts: 4\n  prompts: 5\n")
    with pytest.raises(StudyError) as ei:
        load_study(p)
    text = str(ei.value)
    assert "key 'prompts' is given twice (line 4 and line 5)" in text and str(p) in text


def test_same_key_in_different_mappings_is_fine(write_study):
    study = tiny_study(experiments=[{"batch_size": 1}, {"batch_size": 2}])
    assert len(build_plan(load_study(write_study(study))).configs) == 2


def test_an_oversized_sweep_is_refused_at_once_with_the_count(write_study):
    study = tiny_study(sweep={"prompts": list(range(1, 2001)), "max_output_tokens": list(range(1, 2001))})
    t0 = time.perf_counter()
    text = _plan_error(write_study, study)
    assert time.perf_counter() - t0 < 5      # arithmetic, not expansion (generous for a loaded CI host)
    assert "4,000,000 configurations" in text and f"{MAX_CONFIGURATIONS:,}" in text
    assert "max_output_tokens (2,000 values)" in text


def test_sweep_size_is_the_product_of_axis_lengths():
    assert check_sweep_size({"a": [1, 2, 3], "b": [1, 2]}, 2, file="f") == 12
    assert check_sweep_size({}, 1, file="f") == 1
    with pytest.raises(StudyError):
        check_sweep_size({"a": list(range(MAX_CONFIGURATIONS + 1))}, 1, file="f")


@pytest.mark.parametrize("content, fragment", [
    (None, "is a directory"),
    (b'{"prompt": "a"}\n{"prompt": "b"\n', ":2: not valid JSON"),
    (b'{"prompt": "a"}\n{"text2": "b"}\n', ":2: no 'prompt' string field"),
    (b'{"prompt": "a"}\n\xab\xcd\xef binary\n', "not UTF-8 text (is it a binary file?)"),
    (b"\n\n", "holds no prompts"),
])
def test_bad_prompts_files_fail_at_plan_naming_file_and_line(write_study, tmp_path, content, fragment):
    path = tmp_path / "prompts.jsonl"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    text = _plan_error(write_study, tiny_study(workload={"dataset": str(path), "prompts": 1}))
    assert fragment in text and "workload.dataset" in text and str(path) in text


def test_bad_prompts_file_fails_run_before_any_worker_with_exit_2(write_study, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": \n')
    out = tmp_path / "out"
    proc = run_cli("run", write_study(tiny_study(workload={"dataset": str(path), "prompts": 1})), "--out", out,
                   "--quiet", timeout=300)
    assert proc.returncode == EXIT_INVALID, proc.stdout + proc.stderr
    assert "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.glob("**/trials/*.json"))        # no trial ran


def test_input_tokens_beyond_the_context_length(write_study):
    text = _plan_error(write_study, tiny_study(workload={"dataset": "synthetic", "input_tokens": 5000,
                                                         "max_output_tokens": 4}))
    assert "context length (4096 tokens" in text and "workload.input_tokens" in text


def test_a_model_folder_without_config_json(write_study, tmp_path):
    (tmp_path / "mymodel").mkdir()
    text = _plan_error(write_study, tiny_study(model=str(tmp_path / "mymodel")))
    assert "has no config.json" in text and "model" in text


def test_an_absurd_minimum_window_is_refused(write_study):
    with pytest.raises(StudyError) as ei:
        load_study(write_study(tiny_study(measurement={"min_window_s": 1e9})))
    assert "measurement.min_window_s" in str(ei.value)


_prompt_lines = st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["prompt", "text", "_meta", "x"]),
                    st.one_of(st.text(max_size=8), st.integers(), st.none()), max_size=3).map(json.dumps),
    st.text(max_size=20), st.binary(max_size=12).map(lambda b: b.decode("latin-1"))), max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(lines=_prompt_lines, raw=st.binary(max_size=40))
def test_fuzzed_prompt_files_never_raise_anything_but_study_errors(tmp_path, lines, raw):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(("\n".join(lines)).encode("utf-8", "surrogateescape") + raw)
    loaded = parse_study_text(yaml.safe_dump(tiny_study(workload={"dataset": str(path), "prompts": 2})),
                              file="fuzz.yaml")
    try:
        build_plan(loaded)
    except JoulebenchError as e:
        assert e.exit_code == EXIT_INVALID and str(e)


_sizes = st.one_of(st.tuples(st.integers(1, 30), st.integers(1, 30)),          # small plans
                   st.tuples(st.integers(400, 3000), st.integers(400, 3000)))    # far too many


@settings(max_examples=40, deadline=None)
@given(sizes=_sizes, dup=st.sampled_from(["name", "model", "runner", None]))
def test_fuzzed_sweep_sizes_and_duplicate_keys(sizes, dup):
    a, b = sizes
    text = yaml.safe_dump(tiny_study(sweep={"prompts": list(range(1, a + 1)),
                                            "max_output_tokens": list(range(1, b + 1))}), sort_keys=False)
    if dup:
        text += f"{dup}: again\n"
    try:
        plan = build_plan(parse_study_text(text, file="fuzz.yaml"))
    except JoulebenchError as e:
        assert e.exit_code == EXIT_INVALID
        if dup:
            assert "given twice" in str(e)
        else:
            assert a * b > MAX_CONFIGURATIONS and f"{a * b:,} configurations" in str(e)
    else:
        assert not dup and len(plan.configs) == a * b <= MAX_CONFIGURATIONS


def test_a_failed_load_reaches_the_console_with_its_reason_under_quiet(write_study, tmp_path):
    """A mistake no check can see before loading (a model folder without weights) fails its trials;
    the reason is printed even with --quiet, and the exit code says a trial failed."""
    model = tmp_path / "noweights"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    proc = run_cli("run", write_study(tiny_study(model=str(model))), "--out", tmp_path / "out", "--quiet",
                   timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed: BackendError: cannot load model" in proc.stderr and str(model) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_gpu_the_host_does_not_have_fails_at_plan_and_run(write_study, tmp_path, monkeypatch):
    fake = tmp_path / "one-gpu.json"
    fake.write_text(json.dumps({"gpus": [{"power_w": 70.0}]}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    text = _plan_error(write_study, tiny_study(device="cuda:7"))
    assert "GPU 7 was asked for" in text and "device" in text
    sweep = _plan_error(write_study, tiny_study(device="cpu", sweep={"device": ["cpu", "cuda:7"]}))
    assert "sweep (device: cuda:7)" in sweep
    out = tmp_path / "out"
    proc = run_cli("run", write_study(tiny_study(device="cuda:7")), "--out", out, "--quiet", timeout=300)
    assert proc.returncode == EXIT_INVALID and "GPU 7 was asked for" in proc.stderr
    assert not list(out.glob("**/trials/*.json"))
    # Ray's GPUs are the cluster's: not checked against this host
    assert build_plan(load_study(write_study(tiny_study(device="cuda:7", runner="ray"))))
