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
from joulebench.study.orchestrator import run_study

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


def _run_docker_study(device: str, write_study, tmp_path, monkeypatch):
    study = tiny_study("dockergpu", device=device, runner="docker",
                       runner_options={"image": IMAGE, "reuse_workers": False})
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
        # ... while the trial parameters (which the records keep) name the host's device.
        assert {t["params"]["device"] for t in spec["trials"]} == {device}
    # The fake container "ran" and failed: the study says so, nothing was measured on the CPU.
    assert res.exit_code != 0
    records = list(StudyStore(out).records_by_id().values())
    assert records and all(r["status"] == "failed" for r in records)
    assert all(r["params"]["device"] == device for r in records)


def test_cpu_docker_study_requests_no_gpu(fake_gpus, write_study, tmp_path, monkeypatch):
    res, created, _ = _run_docker_study("cpu", write_study, tmp_path, monkeypatch)
    for c in created:
        assert not c.body["HostConfig"].get("DeviceRequests")
        assert "worker_device" not in c.experiment_spec
