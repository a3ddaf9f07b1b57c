"""A ``runner: docker`` study on a GPU device asks the container engine for exactly that GPU.

The whole host side is real (study file, plan, orchestrator, docker runner, docker SDK, HTTP);
the GPUs are the fake NVML and the container engine is a recording Docker-API server
(tests/docker_api.py), so this runs without a GPU and without an engine. The assertions are on
the JSON body of ``POST /containers/create`` as the engine receives it, and on the experiment
spec the container would read: inside, the passed GPUs are numbered from 0, while the records'
parameters keep the host's device.
"""
from __future__ import annotations

import json

import pytest

from joulebench.results.store import StudyStore
from joulebench.study.run import run_study

from .conftest import tiny_study
from .docker_api import FakeDockerApi

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-4000-8000-00000000000{i}" for i in range(3)]
IMAGE = "joulebench-transformers:gpu-test"


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    spec = {"gpus": [{"uuid": u, "power_w": 80.0, "power_limit_w": 700} for u in UUIDS]}
    path = tmp_path / "fake-nvml.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    return UUIDS


def _run_docker_study(device: str, write_study, tmp_path, monkeypatch, *, reuse_workers: bool = False):
    study = tiny_study("dockergpu", device=device, runner="docker",
                       runner_options={"image": IMAGE, "reuse_workers": reuse_workers})
    out = tmp_path / "results"
    with FakeDockerApi() as api:
        monkeypatch.setenv("DOCKER_HOST", api.docker_host)
        res = run_study(write_study(study), out=out, quiet=True, report=False)
    assert api.created, "the runner never asked the engine for a container"
    return res, api.created, out


def _nvidia_request(ids: list[str]) -> list[dict]:
    return [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ids, "Capabilities": [["gpu"]], "Options": {}}]


@pytest.mark.parametrize("device, host_ordinals", [("cuda:0", [0]), ("cuda:1", [1]), ("cuda:0,2", [0, 2])])
def test_docker_study_requests_exactly_the_experiments_gpus(device, host_ordinals, fake_gpus, write_study,
                                                            tmp_path, monkeypatch):
    res, created, out = _run_docker_study(device, write_study, tmp_path, monkeypatch)
    wanted = [fake_gpus[i] for i in host_ordinals]
    for c in created:   # every attempt (the fake container fails, a retry may follow) asks the same
        host_config = c.body["HostConfig"]
        assert c.body["Image"] == IMAGE
        assert host_config["DeviceRequests"] == _nvidia_request(wanted)
        env = dict(e.split("=", 1) for e in c.body["Env"])
        assert env["JOULEBENCH_ASSIGNED_GPUS"] == ",".join(wanted)
        # Inside the container the passed GPUs are CUDA 0..n-1: the spec it reads says so ...
        spec = c.experiment_spec
        assert spec is not None
        assert spec["worker_device"] == "cuda:" + ",".join(str(i) for i in range(len(wanted)))
        # ... and names the host GPUs it was given, so records keep the host's index
        assert spec["gpus"] == [{"index": i, "uuid": fake_gpus[i]} for i in host_ordinals]
        # ... while the trial parameters (which the records keep) name the host's device.
        assert {t["params"]["device"] for t in spec["trials"]} == {device}
    # The fake container "ran" and failed: the study says so, nothing was measured on the CPU.
    assert res.exit_code != 0
    records = list(StudyStore(out).records_by_id().values())
    assert records and all(r["status"] == "failed" for r in records)
    assert all(r["params"]["device"] == device for r in records)


def test_cpu_docker_study_requests_no_gpu(fake_gpus, write_study, tmp_path, monkeypatch):
    res, created, _ = _run_docker_study("cpu", write_study, tmp_path, monkeypatch, reuse_workers=True)
    for c in created:
        assert not c.body["HostConfig"].get("DeviceRequests")
        assert c.experiment_spec.get("worker_device") is None
        assert "--inbox" in c.body["Cmd"]   # a serving container: its load group's next experiment reuses it
    assert res.exit_code != 0


def test_container_spec_numbers_the_passed_gpus_from_zero():
    from joulebench.runners.docker.request import container_spec, worker_device

    assert worker_device("cuda:1", 1) == "cuda:0"
    assert worker_device("cuda:2,5", 2) == "cuda:0,1"
    assert worker_device("auto", 1) == worker_device("cuda", 1) == "cuda:0"
    assert worker_device("cpu", 1) is None and worker_device("cuda:1", 0) is None
    from joulebench.config.study import MeasurementConfig
    from joulebench.spec import ExperimentSpec, TrialSpec

    spec = ExperimentSpec(experiment_id="e", study="s", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="t", config_id="c", repeat=0, round=0,
                                            params={"device": "cuda:3"})])
    assert container_spec(spec, ["GPU-x"]) == spec.model_copy(update={"worker_device": "cuda:0"})
    assert container_spec(spec, []) is spec
    assert spec.worker_device is None   # the experiment's own spec is left as it was


def test_worker_told_of_a_gpu_it_does_not_have_fails_instead_of_running_on_cpu(tmp_path, monkeypatch):
    """The worker in a container whose GPU did not arrive (engine without the NVIDIA runtime) must fail
    the trial, not measure on the CPU: ``device: auto`` alone would quietly fall back."""
    import subprocess
    import sys

    from joulebench.config import load_study
    from joulebench.runners.docker.request import container_spec
    from joulebench.study.display import Display
    from joulebench.study.orchestrator import Orchestrator
    from joulebench.study.plan import build_plan
    from joulebench.results.store import StudyStore

    no_gpus = tmp_path / "no-gpus.json"
    no_gpus.write_text(json.dumps({"gpus": []}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(no_gpus))
    loaded = load_study(tiny_study("nogpu", device="auto"))
    plan = build_plan(loaded)
    store = StudyStore(tmp_path / "study")
    store.create()
    from joulebench.runners.process import ProcessRunner

    orch = Orchestrator(loaded, plan, store.root, ProcessRunner(), Display(quiet=True))
    spec = container_spec(orch._experiment_spec("e1", 0, plan.configs), ["GPU-passed-but-absent"])
    (tmp_path / "experiment.json").write_text(spec.to_json())
    proc = subprocess.run([sys.executable, "-m", "joulebench.worker.main", str(tmp_path / "experiment.json"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    (rec_path,) = (tmp_path / "out" / "trials").glob("*.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "failed", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "GPU" in rec["error"] and rec["params"]["device"] == "auto"
