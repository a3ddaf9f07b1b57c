"""The worker validates its experiment spec once, as it reads it: a spec that does not validate ends
it with WorkerExit.BAD_SPEC (2) and one line on stderr naming the file and the first error."""
from __future__ import annotations

import json
import subprocess
import sys

from joulebench.config.study import MeasurementConfig
from joulebench.spec import ExperimentSpec, TrialSpec, WorkerExit
from joulebench.worker.main import take_spec


def _spec_json(**kw) -> dict:
    spec = ExperimentSpec(experiment_id="r0-g-a001", study="s", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="c1-r0", config_id="c1", repeat=0, round=0,
                                            params={"backend": "transformers", "model": "m", "device": "cpu"})])
    return {**json.loads(spec.to_json()), **kw}


def _worker(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "joulebench.worker.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_a_spec_that_does_not_validate_exits_bad_spec(tmp_path):
    bad = _spec_json()
    bad["trials"][0].pop("config_id")
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(bad))
    r = _worker(path, "--out", tmp_path / "out")
    assert r.returncode == WorkerExit.BAD_SPEC == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "trials.0.config_id" in lines[0], r.stderr
    assert "@@joulebench" not in r.stdout                   # nothing ran, nothing was announced
    assert not list((tmp_path / "out").glob("trials/*.json"))


def test_unknown_fields_and_broken_json_are_bad_specs_too(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(_spec_json(mesurement={})))
    r = _worker(path, "--out", tmp_path / "out")
    assert r.returncode == 2 and "mesurement" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    path.write_text('{"experiment_id": ')
    r = _worker(path, "--out", tmp_path / "out")
    assert r.returncode == 2 and str(path) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _worker(tmp_path / "missing.json", "--out", tmp_path / "out")
    assert r.returncode == 2 and "missing.json" in r.stderr


def test_a_bad_spec_in_the_inbox_exits_bad_spec(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "000001-e1.json").write_text(json.dumps(_spec_json(round="first")))
    r = _worker("--out", tmp_path / "out", "--inbox", inbox, "--idle-timeout-s", 30)
    assert r.returncode == 2, r.stderr
    assert "000001-e1.json" in r.stderr and "round" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert '"event": "ready"' in r.stdout                    # it was up and waiting


def test_take_spec_validates_what_it_takes(tmp_path):
    import os

    (tmp_path / "000001-e1.json").write_text(json.dumps(_spec_json(env={"A": "1"})))
    spec = take_spec(tmp_path, parent=os.getppid(), idle_timeout_s=5)
    assert isinstance(spec, ExperimentSpec) and spec.env == {"A": "1"} and spec.trials[0].config_id == "c1"
    assert spec.measurement.loaded_idle_s == MeasurementConfig().loaded_idle_s
    assert not list(tmp_path.glob("*.json"))
    (tmp_path / "stop").write_text("")
    assert take_spec(tmp_path, parent=os.getppid(), idle_timeout_s=5) is None
