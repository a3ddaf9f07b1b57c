"""A study whose engine cannot run in its interpreter fails before any trial, with the fix."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from joulebench.errors import StudyError
from joulebench.study.run import run_study

from .conftest import tiny_study


def test_an_engine_environment_without_joulebench_fails_early(write_study, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    study = tiny_study("env", runner_options={"environments": {"transformers": str(bare / "bin" / "python")}})
    with pytest.raises(StudyError) as ei:
        run_study(write_study(study), out=tmp_path / "r", quiet=True, report=False)
    text = str(ei.value)
    assert "lacks joulebench" in text and "pip install -e" in text
    assert not list((tmp_path / "r" / "trials").glob("*.json"))  # nothing ran
    shutil.rmtree(bare)
