"""Staging folders are bind-mount sources: always absolute, whatever the study directory was given as."""
from __future__ import annotations

from joulebench.config.study import MeasurementConfig
from joulebench.runners.docker import mounts
from joulebench.spec import ExperimentSpec, TrialSpec


def test_staging_is_absolute_for_a_relative_study_directory(tmp_path, monkeypatch):
    """The default study directory is relative (joulebench-results/<study>-<time>); the engine refuses
    relative mount sources ("mount path must be absolute"), as the compose quickstart showed."""
    monkeypatch.chdir(tmp_path)
    spec = ExperimentSpec(experiment_id="e1", study="s", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="t1", config_id="c", repeat=0, round=0, params={})])
    staging = mounts.stage("joulebench-results/s-1", "e1", spec)
    assert staging.is_absolute()
    assert staging == tmp_path / "joulebench-results" / "s-1" / ".staging" / "e1"
    assert (staging / "experiment.json").is_file() and (staging / "out").is_dir()
