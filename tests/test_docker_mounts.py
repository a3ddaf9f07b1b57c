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


def test_merge_is_quiet_about_a_kept_containers_earlier_records_and_names_strays(tmp_path, caplog):
    """A container kept between rounds holds the records of the rounds it ran before (merged then): merging
    round 2 must not warn about them; a record nobody asked for and the study lacks is still named."""
    study, staging = tmp_path / "study", tmp_path / "staging"
    (study / "trials").mkdir(parents=True)
    (study / "timeseries").mkdir()
    (staging / "out" / "trials").mkdir(parents=True)
    for tid in ("r0-old", "r1-new", "stray"):
        (staging / "out" / "trials" / f"{tid}.json").write_text(f'{{"trial_id": "{tid}"}}')
    (study / "trials" / "r0-old.json").write_text('{"trial_id": "r0-old"}')     # merged in round 0
    with caplog.at_level("WARNING", logger=mounts.log.name):
        finished = mounts.merge(study, staging, "r1-exp", ["r1-new"])
    assert finished == ["r1-new"]
    assert (study / "trials" / "r1-new.json").is_file() and not (study / "trials" / "stray.json").exists()
    warned = [r.getMessage() for r in caplog.records]
    assert any("stray.json" in m for m in warned), warned
    assert not any("r0-old" in m for m in warned), warned
