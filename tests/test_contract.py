"""The host half of the host <-> worker contract: the orchestrator builds a typed ExperimentSpec,
the process runner writes it as the worker reads it, and the worker's event lines come back typed."""
from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

from joulebench.config.loader import load_study
from joulebench.results.store import RETRYABLE_ERROR_KINDS, StudyStore
from joulebench.runners.base import Experiment
from joulebench.runners.process import ProcessRunner, WorkerProcess, read_spec
from joulebench.spec import (ErrorKind, ExperimentEndEvent, ExperimentSpec, ExperimentStartEvent, PhaseEvent,
                             TrialEndEvent, TrialStartEvent, TrialStatus)
from joulebench.study.display import Display
from joulebench.study.orchestrator import Orchestrator
from joulebench.study.run import _prepare_new_study
from joulebench.study.plan import build_plan, trial_id_for

from .conftest import tiny_study

# The keys of the untyped experiment dict the orchestrator wrote before the typed contract.
UNTYPED_KEYS = {"experiment_id", "study", "round", "base_dir", "seed", "trust_remote_code", "measurement",
                "device_idle", "device_idle_flags", "thermal_reference_c", "trials"}


def _orchestrator(write_study, tmp_path: Path, **study_kw) -> Orchestrator:
    loaded = load_study(write_study(tiny_study("contract", **study_kw)))
    plan = build_plan(loaded)
    study_dir = tmp_path / "study"
    _prepare_new_study(loaded, plan, study_dir, None)
    return Orchestrator(loaded, plan, study_dir, ProcessRunner(), Display(quiet=True))


def _sweep(write_study, tmp_path: Path) -> Orchestrator:
    return _orchestrator(write_study, tmp_path, sweep={"max_output_tokens": [2, 4]}, seed=7)


def test_experiment_spec_is_typed_and_round_trips(write_study, tmp_path):
    orch = _sweep(write_study, tmp_path)
    configs = list(orch.plan.configs)
    assert len(configs) == 2 and len({c.load_group for c in configs}) == 1
    orch.device_idle = {"power_w": 61.5, "per_device_w": {"GPU-1": 61.5}}
    orch.device_idle_flags = ["IDLE_BASELINE_DRIFTED"]
    orch.store.update_manifest(thermal_reference_c=41.0)

    spec = orch._experiment_spec("r1-g-00001-001", 1, configs)

    assert isinstance(spec, ExperimentSpec)
    assert spec.experiment_id == "r1-g-00001-001" and spec.study == "contract" and spec.round == 1
    assert spec.seed == 7 and spec.base_dir == str(orch.loaded.base_dir)
    assert spec.trial_ids == [trial_id_for(c.config_id, 1) for c in configs]
    assert [(t.config_id, t.repeat, t.round, t.params) for t in spec.trials] == [
        (c.config_id, 1, 1, c.params) for c in configs]
    assert spec.measurement == orch.cfg.measurement
    assert spec.device_idle == orch.device_idle and spec.device_idle_flags == ["IDLE_BASELINE_DRIFTED"]
    assert spec.thermal_reference_c == 41.0
    back = ExperimentSpec.from_json(spec.to_json())
    assert back == spec
    # the JSON keeps every key of the untyped dict, with the same values
    data = json.loads(spec.to_json())
    assert UNTYPED_KEYS <= set(data)
    assert data["measurement"] == orch.cfg.measurement.model_dump(mode="json")
    assert data["trials"][0] == {"trial_id": spec.trial_ids[0], "config_id": configs[0].config_id, "repeat": 1,
                                 "round": 1, "params": json.loads(json.dumps(configs[0].params))}


def test_busy_gpu_allow_sets_the_flag_in_the_spec_only(write_study, tmp_path):
    orch = _orchestrator(write_study, tmp_path)
    orch.busy_gate.policy = "allow"
    spec = orch._experiment_spec("e", 0, list(orch.plan.configs))
    assert spec.measurement.allow_foreign_processes is True
    assert orch.cfg.measurement.allow_foreign_processes is False   # the study's own config is untouched


def test_failed_records_hold_the_plain_error_kind(write_study, tmp_path):
    orch = _orchestrator(write_study, tmp_path)
    c = orch.plan.configs[0]
    orch._mark_failed(c, 0, "worker gone", ErrorKind.WORKER_LOST, None)
    raw = json.loads(orch.store.trial_path(trial_id_for(c.config_id, 0)).read_text())
    assert raw["error_kind"] == "worker-lost" and raw["status"] == "failed"
    assert "worker-lost" in RETRYABLE_ERROR_KINDS
    assert trial_id_for(c.config_id, 0) not in orch.store.done_ids()   # resume runs it again


# A stand-in worker: reads the spec file the runner wrote, as the worker does, and answers with event
# lines between engine chatter. FAKE_RC sets its exit code.
FAKE_WORKER = textwrap.dedent("""\
    import os, sys
    from joulebench.spec import (ExperimentEndEvent, ExperimentSpec, ExperimentStartEvent, PhaseEvent,
                                 TrialEndEvent, TrialStartEvent, format_event)
    args = sys.argv[sys.argv.index("joulebench.worker.main") + 1:]
    spec = ExperimentSpec.from_json(open(args[0], "rb").read())
    out = lambda ev: print(format_event(ev), flush=True)
    out(ExperimentStartEvent(experiment_id=spec.experiment_id))
    print("engine chatter", flush=True)
    out(PhaseEvent(phase="load"))
    print('@@joulebench {"event": "trial_end", "trial_', flush=True)   # a torn line: not an event
    for t in spec.trials:
        out(TrialStartEvent(trial_id=t.trial_id))
        out(TrialEndEvent(trial_id=t.trial_id, status="ok"))
    out(ExperimentEndEvent(experiment_id=spec.experiment_id))
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
""")


def _fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fake-worker.py"
    script.write_text(FAKE_WORKER)
    exe = tmp_path / "fakepython"
    # Called as `fakepython -m joulebench.worker.main SPEC --out DIR`: run the stand-in with those arguments.
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def _run(orch: Orchestrator, tmp_path: Path, monkeypatch, rc: int):
    monkeypatch.setenv("FAKE_RC", str(rc))
    spec = orch._experiment_spec(f"r0-g-rc{rc}", 0, list(orch.plan.configs))
    exp = Experiment(experiment_id=spec.experiment_id, study_name=spec.study, study_dir=orch.store.root,
                     spec=spec, python=_fake_python(tmp_path))
    events: list = []
    outcome = orch.runner.run_experiment(exp, on_event=events.append, timeout_s=60)
    return spec, exp, events, outcome


def test_process_runner_writes_the_spec_the_worker_reads_and_types_its_events(write_study, tmp_path,
                                                                             monkeypatch):
    orch = _sweep(write_study, tmp_path)
    spec, exp, events, outcome = _run(orch, tmp_path, monkeypatch, rc=0)

    assert exp.trial_ids == spec.trial_ids   # from the spec
    written = orch.store.root / "experiments" / f"{spec.experiment_id}.json"
    assert ExperimentSpec.from_json(written.read_bytes()) == spec == read_spec(written)
    assert events == [ExperimentStartEvent(experiment_id=spec.experiment_id), PhaseEvent(phase="load"),
                      *[e for t in spec.trial_ids for e in (TrialStartEvent(trial_id=t),
                                                            TrialEndEvent(trial_id=t, status=TrialStatus.OK))],
                      ExperimentEndEvent(experiment_id=spec.experiment_id)]
    assert outcome.error is None and outcome.error_kind is None and outcome.exit_code == 0
    assert outcome.finished == spec.trial_ids and outcome.started
    log = (orch.store.logs_dir / f"{spec.experiment_id}.log").read_text()
    assert "engine chatter" in log and '"trial_' in log   # non-event lines go to the log


def test_exit_codes_map_to_error_kinds(write_study, tmp_path, monkeypatch):
    orch = _orchestrator(write_study, tmp_path)
    *_, loaded_failed = _run(orch, tmp_path, monkeypatch, rc=3)   # load failed: recorded by the worker
    assert loaded_failed.exit_code == 3 and loaded_failed.error is None
    *_, crashed = _run(orch, tmp_path, monkeypatch, rc=5)
    assert crashed.error_kind is ErrorKind.CRASH and "code 5" in crashed.error


def test_inbox_spec_is_readable_by_the_worker(tmp_path):
    spec = ExperimentSpec.from_json(json.dumps({
        "experiment_id": "r1-g-002", "study": "s", "round": 1, "measurement": {},
        "trials": [{"trial_id": "c-r1", "config_id": "c", "repeat": 1, "round": 1, "params": {"backend": "x"}}]}))
    w = WorkerProcess(["true"], env=dict(os.environ), log_path=tmp_path / "w.log", inbox=tmp_path / "inbox")
    (tmp_path / "inbox").mkdir()
    w.send(spec, 7)
    files = list((tmp_path / "inbox").iterdir())
    assert [f.name for f in files] == ["000007-r1-g-002.json"]
    assert ExperimentSpec.from_json(files[0].read_bytes()) == spec


def test_an_orchestrator_built_spec_is_accepted_by_the_worker_session(write_study, tmp_path):
    """Test (a) end to end: orchestrator -> JSON file -> a real worker process validates it once and
    runs its trials on the CPU (events typed on the way back, records written)."""
    import subprocess

    orch = _orchestrator(write_study, tmp_path)
    spec = orch._experiment_spec("r0-contract-001", 0, list(orch.plan.configs))
    path = tmp_path / "experiment.json"
    path.write_text(spec.to_json())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "joulebench.worker.main", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from joulebench.spec import parse_event

    events = [e for e in map(parse_event, proc.stdout.splitlines()) if e is not None]
    assert isinstance(events[0], ExperimentStartEvent) and events[0].experiment_id == "r0-contract-001"
    assert isinstance(events[-1], ExperimentEndEvent) and events[-1].error is None
    ends = [e for e in events if isinstance(e, TrialEndEvent)]
    assert [e.trial_id for e in ends] == spec.trial_ids and {e.status for e in ends} == {TrialStatus.OK}
    recs = StudyStore(out).records_by_id()
    assert set(recs) == set(spec.trial_ids)
    assert all(r["status"] == "ok" and r["experiment_id"] == "r0-contract-001" for r in recs.values())
