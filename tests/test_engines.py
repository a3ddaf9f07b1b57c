"""Engine environments: where a backend's worker runs, and whether that interpreter can run it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from joulebench.runners import environments as engines
from joulebench.errors import StudyError


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("JOULEBENCH_ENVIRONMENTS", raising=False)
    for b in ("VLLM", "LLAMACPP", "TRANSFORMERS", "SGLANG"):
        monkeypatch.delenv(f"JOULEBENCH_{b}_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)


def _fake_venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    py = root / "bin" / "python"
    py.symlink_to(sys.executable)
    return py


def test_study_environment_map_wins_over_python_and_user_file(tmp_path):
    venv = tmp_path / "envs" / "vllm"
    _fake_venv(venv)
    cfg = tmp_path / "xdg" / "joulebench" / "environments.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("vllm: /from/user/file/bin/python\nllamacpp: ../../envs/llama\n")
    opts = {"environments": {"vllm": "envs/vllm"}, "python": "/opt/other/bin/python"}
    # a venv directory -> its bin/python, relative to the study's folder, symlink kept
    assert engines.resolve_python("vllm", opts, base_dir=tmp_path) == str(venv / "bin" / "python")
    assert engines.resolve_python("llamacpp", opts, base_dir=tmp_path) == "/opt/other/bin/python"
    # no study setting: the user file, relative paths from the file's folder
    assert engines.resolve_python("vllm", {}) == "/from/user/file/bin/python"
    assert engines.resolve_python("llamacpp", None) == str(tmp_path / "envs" / "llama")


def test_environment_variable_beats_user_file(tmp_path, monkeypatch):
    cfg = tmp_path / "envs.yaml"
    cfg.write_text("environments:\n  vllm: /a/bin/python\n")
    monkeypatch.setenv("JOULEBENCH_ENVIRONMENTS", str(cfg))
    assert engines.resolve_python("vllm", None) == "/a/bin/python"
    monkeypatch.setenv("JOULEBENCH_VLLM_PYTHON", "/b/bin/python")
    assert engines.resolve_python("vllm", None) == "/b/bin/python"


def test_discovery_uses_dot_venvs_only_when_the_engine_is_missing_here(tmp_path):
    # "sglang" is not importable here: ./.venvs/sglang is discovered
    assert engines.resolve_python("sglang", None) is None
    py = _fake_venv(tmp_path / ".venvs" / "sglang")
    assert engines.resolve_python("sglang", None) == str(py)
    assert engines.resolve_python("sglang", None, discover=False) is None
    # an engine importable here (json stands in) keeps the current interpreter
    engines.ENGINE_MODULES["_here"] = ("json",)
    try:
        _fake_venv(tmp_path / ".venvs" / "_here")
        assert engines.resolve_python("_here", None) is None
    finally:
        del engines.ENGINE_MODULES["_here"]


def test_bad_user_file_is_a_clear_error(tmp_path, monkeypatch):
    cfg = tmp_path / "envs.yaml"
    cfg.write_text("- just\n- a list\n")
    monkeypatch.setenv("JOULEBENCH_ENVIRONMENTS", str(cfg))
    with pytest.raises(StudyError, match="envs.yaml.*map of backend name"):
        engines.resolve_python("vllm", None)
    cfg.write_text("vllm: [unclosed\n")
    with pytest.raises(StudyError, match="cannot parse"):
        engines.resolve_python("vllm", None)


def test_check_current_interpreter_finds_joulebench_but_not_a_missing_engine():
    info = engines.check_environment(None, "sglang")
    assert info["joulebench"] is not None and info["python"] == sys.executable
    assert not info["ok"]
    assert any("cannot import sglang" in e for e in info["errors"])
    ok = engines.check_environment(None, None)
    assert ok["ok"] and ok["python_version"] == sys.version.split()[0]


def test_environment_without_joulebench_says_how_to_fix_it(tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    info = engines.check_environment(py, "llamacpp", repo_hint="/src/joulebench")
    assert not info["ok"] and info["joulebench"] is None and info["engine_version"] is None
    assert f"the environment at {py} lacks joulebench" in info["errors"][0]
    assert f"run {py} -m pip install -e /src/joulebench --no-deps" in info["hint"]
    assert "setup-llamacpp-env.sh" in info["hint"]
    with pytest.raises(StudyError, match="lacks joulebench"):
        engines.require_environment(py, "llamacpp")


def test_missing_interpreter(tmp_path):
    info = engines.check_environment(str(tmp_path / "nope" / "bin" / "python"), "vllm")
    assert not info["ok"] and "does not exist" in info["errors"][0] and "setup-vllm-env.sh" in info["hint"]


def test_list_environments_rows(tmp_path):
    rows = engines.list_environments(["sglang"], {"environments": {"sglang": str(tmp_path / "none")}})
    assert rows[0]["backend"] == "sglang" and rows[0]["ok"] is False
    assert rows[0]["python"] == str(tmp_path / "none")
    assert "does not exist" in rows[0]["errors"][0]
