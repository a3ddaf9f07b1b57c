"""The container runner against real Docker-API engines (Podman and Docker in CI).

Runs against each engine (Podman and Docker, ids ``podman`` / ``docker``; tests/engines.py says
where they answer) with the local base image (``JOULEBENCH_BASE_IMAGE``, default
``localhost/joulebench-base:bookworm``; scripts/podman-setup.sh and scripts/dockerd-setup.sh make
both). Skips an engine that does not answer. The full set runs on one engine, the tests marked
``every_engine`` on both. Container mechanics (clean-up after SIGINT, a non-zero exit,
a timeout, a SIGKILLed dispatcher) run small commands in the base image; the end-to-end study
builds the real transformers image and runs the real worker in it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from joulebench.runners.base import Experiment
from joulebench.config.study import MeasurementConfig
from joulebench.spec import EVENT_PREFIX, ExperimentSpec, TrialSpec
from joulebench.runners.docker.request import LABEL_STUDY
from joulebench.runners.docker.runner import DockerRunner

from .engines import prune_build_leftovers

pytestmark = pytest.mark.containers

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")


@pytest.fixture(scope="module")
def engine(container_engine):
    """The SDK client of each engine in turn (Podman and Docker; tests/engines.py)."""
    return container_engine.client


def _study_containers(client, study: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_STUDY}={study}"})


def _event(ev: dict) -> str:
    return EVENT_PREFIX + json.dumps(ev)


def _typed_spec(study: str, trial_ids, params: dict) -> ExperimentSpec:
    return ExperimentSpec(experiment_id="e1", study=study, round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id=t, config_id="c", repeat=0, round=0, params=params)
                                  for t in trial_ids])


def _experiment(tmp_path: Path, study: str, trial_ids=("t1",)) -> Experiment:
    spec = _typed_spec(study, trial_ids, {"backend": "transformers"})
    return Experiment(experiment_id="e1", study_name=study, study_dir=tmp_path / "study", spec=spec,
                      trial_ids=list(trial_ids))


def _cmd(body: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(body)]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.every_engine
def test_worker_output_is_merged_and_events_stream(engine, tmp_path):
    study = _name("jb-merge")
    start, end = _event({"event": "trial_start", "trial_id": "t1"}), _event({"event": "trial_end", "trial_id": "t1",
                                                                            "status": "ok"})
    body = f"""
        import json, os, sys
        spec = json.load(open("/jb/experiment.json"))
        print({start!r}, flush=True)
        print("engine chatter on stderr", file=sys.stderr, flush=True)
        for d in ("trials", "timeseries", "logs"):
            os.makedirs("/jb/out/" + d, exist_ok=True)
        rec = {{"trial_id": "t1", "status": "ok", "study": spec["study"], "uid": os.getuid(),
                "net": sorted(os.listdir("/sys/class/net"))}}
        json.dump(rec, open("/jb/out/trials/t1.json", "w"))
        open("/jb/out/timeseries/t1.parquet", "wb").write(b"PAR1")
        json.dump({{"trial_id": "stray"}}, open("/jb/out/trials/stray.json", "w"))
        try:
            open("/jb/experiment.json", "a")
            print("EXPERIMENT WRITABLE")
        except OSError:
            print("experiment read-only")
        print({end!r}, flush=True)
    """
    runner = DockerRunner(client=engine, images={"transformers": BASE_IMAGE}, command=_cmd(body))
    runner.prepare(tmp_path / "study", study)
    events = []
    t0 = time.monotonic()
    out = runner.run_experiment(_experiment(tmp_path, study), on_event=events.append, timeout_s=120)
    assert out.error is None, out.log_tail
    assert out.exit_code == 0 and out.finished == ["t1"] and out.in_flight is None
    assert [e.event for e in events] == ["trial_start", "trial_end"]
    rec = json.loads((tmp_path / "study" / "trials" / "t1.json").read_text())
    assert rec["study"] == study and rec["uid"] != 0          # unprivileged inside
    assert rec["net"] == ["lo"]                                # network none: loopback only
    assert (tmp_path / "study" / "timeseries" / "t1.parquet").read_bytes() == b"PAR1"
    assert not (tmp_path / "study" / "trials" / "stray.json").exists()   # not a trial of this experiment
    assert "experiment read-only" in out.log_tail and "engine chatter" in out.log_tail
    assert not (tmp_path / "study" / ".staging" / "e1").exists()
    assert _study_containers(engine, study) == []
    print(f"container experiment round trip: {time.monotonic() - t0:.2f} s")


@pytest.mark.every_engine
def test_nonzero_exit_fails_the_experiment_keeps_the_log_and_removes_the_container(engine, tmp_path):
    study = _name("jb-crash")
    start = _event({"event": "trial_start", "trial_id": "t1"})
    runner = DockerRunner(client=engine, images={"transformers": BASE_IMAGE},
                          command=_cmd(f"import sys; print({start!r}, flush=True); print('boom: CUDA OOM');"
                                       f" sys.exit(3)"))
    out = runner.run_experiment(_experiment(tmp_path, study), on_event=lambda e: None, timeout_s=120)
    assert out.exit_code == 3 and out.error_kind == "crash" and "code 3" in out.error
    assert out.in_flight == "t1" and out.finished == []
    log = (tmp_path / "study" / "logs" / "e1.container.log").read_text()
    assert "boom: CUDA OOM" in log and "exit code 3" in log
    assert _study_containers(engine, study) == []


@pytest.mark.every_engine
def test_timeout_stops_and_removes_the_container(engine, tmp_path):
    study = _name("jb-timeout")
    runner = DockerRunner(client=engine, images={"transformers": BASE_IMAGE},
                          command=_cmd("import time; print('sleeping', flush=True); time.sleep(120)"))
    t0 = time.monotonic()
    out = runner.run_experiment(_experiment(tmp_path, study), on_event=lambda e: None, timeout_s=2)
    elapsed = time.monotonic() - t0
    assert out.error_kind == "timeout" and "timed out after 2 s" in out.error
    assert elapsed < 20, f"stop took {elapsed:.1f} s: SIGTERM did not reach the worker (init?)"
    assert _study_containers(engine, study) == []
    assert (tmp_path / "study" / "logs" / "e1.container.log").exists()


@pytest.mark.every_engine
def test_permanent_engine_error_fails_clearly(engine, tmp_path):
    study = _name("jb-noimage")
    runner = DockerRunner(client=engine, images={"transformers": "localhost/joulebench-no-such-image:0"})
    out = runner.run_experiment(_experiment(tmp_path, study), on_event=lambda e: None, timeout_s=30)
    assert out.error_kind == "infrastructure"
    assert "no-such-image" in out.error or "not known" in out.error.lower() or "no such" in out.error.lower()
    assert _study_containers(engine, study) == []


DISPATCHER = """
import json, sys
from pathlib import Path
from joulebench.runners.base import Experiment
from joulebench.runners.docker.runner import DockerRunner
study_dir, study, image = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
body = "import time; print(%r, flush=True); time.sleep(300)" % sys.argv[4]
runner = DockerRunner(images={"transformers": image}, command=["python3", "-c", body])
runner.prepare(study_dir, study)
from joulebench.config.study import MeasurementConfig
from joulebench.spec import ExperimentSpec, TrialSpec
spec = ExperimentSpec(experiment_id="e1", study=study, round=0, measurement=MeasurementConfig(),
                      trials=[TrialSpec(trial_id="t1", config_id="c", repeat=0, round=0, params={})])
exp = Experiment(experiment_id="e1", study_name=study, study_dir=study_dir, spec=spec, trial_ids=["t1"])
try:
    runner.run_experiment(exp, on_event=lambda ev: print("EVENT", ev.model_dump_json(), flush=True), timeout_s=300)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
finally:
    runner.close()
"""


def _start_dispatcher(tmp_path: Path, study: str) -> subprocess.Popen:
    script = tmp_path / "dispatcher.py"
    script.write_text(DISPATCHER)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "study"), study, BASE_IMAGE,
                             _event({"event": "trial_start", "trial_id": "t1"})],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 90
    for line in proc.stdout:   # wait until the worker inside the container is running
        if line.startswith("EVENT") and "trial_start" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"dispatcher did not start its container: {proc.stdout.read()}")


@pytest.mark.every_engine
def test_sigint_to_the_dispatcher_removes_the_container(engine, tmp_path):
    study = _name("jb-sigint")
    proc = _start_dispatcher(tmp_path, study)
    assert len(_study_containers(engine, study)) == 1
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "INTERRUPTED" in rest
    assert _study_containers(engine, study) == []
    assert not (tmp_path / "study" / ".staging" / "e1").exists()


def test_sigkilled_dispatcher_leftovers_are_swept_at_restart(engine, tmp_path):
    study = _name("jb-sigkill")
    (tmp_path / "other").mkdir()
    # Another dispatcher of the same study, alive (e.g. on other GPUs): its container must survive.
    other = _start_dispatcher(tmp_path / "other", study)
    try:
        proc = _start_dispatcher(tmp_path, study)
        mine = {c.name for c in _study_containers(engine, study)}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        left = [c for c in _study_containers(engine, study) if c.labels["joulebench.dispatcher-pid"] == str(proc.pid)]
        assert len(left) == 1 and left[0].status == "running"   # nothing could clean up after SIGKILL
        assert len(mine) == 2
        assert (tmp_path / "study" / ".staging").exists()
        runner = DockerRunner(client=engine)
        runner.prepare(tmp_path / "study", study)                # the restart: sweep leftovers, staging
        remaining = _study_containers(engine, study)
        assert [c.name for c in remaining] == [n for n in mine if n != left[0].name]
        assert remaining[0].labels["joulebench.dispatcher-pid"] == str(other.pid)
        assert not (tmp_path / "study" / ".staging").exists()
    finally:
        other.send_signal(signal.SIGINT)
        other.communicate(timeout=60)
    assert _study_containers(engine, study) == []


@pytest.fixture(scope="module")
def transformers_image(engine):
    """The real transformers image, built (or found current) on the local base with CPU torch."""
    from joulebench.runners.docker import images

    mp = pytest.MonkeyPatch()
    mp.setenv("JOULEBENCH_BASE_IMAGE", BASE_IMAGE)
    t0 = time.monotonic()
    lines: list[str] = []
    try:
        info = images.build_images(["transformers"], client=engine, progress=lambda e, l: lines.append(l))[0]
    except images.ImageError as exc:
        mp.undo()
        pytest.fail(f"the transformers image did not build: {exc}")
    print(f"transformers image {info.ref}: {'built' if info.built else 'current'} in {time.monotonic() - t0:.1f} s")
    assert info.current
    if info.built:   # a build times itself and says so
        assert info.build_s is not None and info.build_s > 0
        assert any(line.startswith(f"built {info.ref} in ") for line in lines), lines[-5:]
    # unchanged inputs: never rebuilt
    again = images.build_images(["transformers"], client=engine)[0]
    assert again.ref == info.ref and again.built is False and again.build_s is None
    if info.built:
        prune_build_leftovers(engine)
        assert info.ref.split("/")[-1] in " ".join(engine.images.get(info.ref).tags)   # the image itself stays
    yield info
    mp.undo()


@pytest.mark.slow
@pytest.mark.every_engine
def test_real_cpu_study_through_runner_docker(engine, transformers_image, tmp_path, monkeypatch):
    """A real study: the worker in the container generates with transformers on a tiny synthetic model."""
    import joulebench
    from .conftest import tiny_study

    study = tiny_study(_name("jb-e2e"), runner="docker", sweep={"batch_size": [1, 2]}, repeats=2)
    res = joulebench.run_study(study, out=tmp_path / "study", quiet=True, report=False)
    assert res.exit_code == 0 and res.ok == 4 and res.failed == 0
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "study" / "trials").glob("*.json"))]
    assert len(recs) == 4
    # one container served both rounds: one worker, one model load, two experiments
    assert len({r["worker_id"] for r in recs}) == 1 and len({r["experiment_id"] for r in recs}) == 2
    assert len({r["load_s"] for r in recs}) == 1
    assert all(r["warmup"]["rewarm"] for r in recs if r["round"] == 1)
    for r in recs:
        assert r["status"] == "ok"
        assert r["output_tokens"] > 0 and r["output_tokens"] % (4 * 4) == 0   # whole passes of 4 x 4 tokens
        assert r["duration_s"] > 0 and r["throughput_tok_s"] > 0
        assert r["environment"]["in_container"] is True          # recorded inside the container
        assert r["environment"]["image"]["engine"] == "transformers"   # the image's versions file
        assert r["environment"]["image"]["packages"]["torch"] == r["environment"]["libraries"]["torch"]
        assert (tmp_path / "study" / "timeseries" / f"{r['trial_id']}.parquet").exists() or \
            r.get("timeseries") is None
    assert sorted(r["params"]["batch_size"] for r in recs) == [1, 1, 2, 2]
    assert _study_containers(engine, study["name"]) == []
    assert not any((tmp_path / "study" / ".staging").glob("*"))


@pytest.mark.slow
def test_serving_container_ends_itself_when_the_dispatcher_stops_beating(engine, transformers_image, tmp_path):
    """A container kept between rounds (model loaded, worker idle on its inbox) cannot see a SIGKILLed
    dispatcher: it ends itself once the heartbeat file goes stale. The next experiment of its load group
    would have reused it; another group's retires it."""
    from joulebench.config import load_study
    from joulebench.study.display import Display
    from joulebench.study.orchestrator import Orchestrator
    from joulebench.study.plan import build_plan
    from joulebench.results.store import StudyStore

    from .conftest import tiny_study

    name = _name("jb-beat")
    loaded = load_study(tiny_study(name, runner="docker"))
    plan = build_plan(loaded)
    store = StudyStore(tmp_path / "study")
    store.create()
    runner = DockerRunner(client=engine)
    runner.heartbeat_timeout_s = 3.0
    orch = Orchestrator(loaded, plan, store.root, runner, Display(quiet=True))
    spec = orch._experiment_spec("e1", 0, plan.configs)
    exp = Experiment(experiment_id="e1", study_name=name, study_dir=store.root, spec=spec,
                     trial_ids=spec.trial_ids, worker_key="g|")
    try:
        out = runner.run_experiment(exp, on_event=lambda e: None, timeout_s=300)
        assert out.error is None and out.reusable and out.finished == exp.trial_ids
        live = runner._worker
        assert live is not None and live.alive()                 # kept, idle on its inbox
        (c,) = _study_containers(engine, name)
        assert c.status == "running"
        live.beat_stop.set()                                        # the dispatcher "dies": no more beats
        deadline = time.monotonic() + 30
        while live.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not live.alive(), "the idle container outlived its dispatcher's heartbeat"
        assert live.waited.get("code") == 0
    finally:
        runner.close()
    assert _study_containers(engine, name) == []
    assert not any((store.root / ".staging").glob("*"))


def test_stale_images_are_listed_and_removed(engine, transformers_image):
    from joulebench.runners.docker import images

    img = engine.images.get(transformers_image.ref)
    img.tag(transformers_image.name, "000000000000")          # an image of older inputs
    info = images.image_status(["transformers"], client=engine)[0]
    assert info.current and "000000000000" in info.stale_tags
    assert images.remove_stale("transformers", client=engine) == [f"{transformers_image.name}:000000000000"]
    info = images.image_status(["transformers"], client=engine)[0]
    assert info.current and info.stale_tags == ()
