"""What the container runner sends to the Docker API, checked without an engine.

The SDK client is real; only its containers collection is subclassed to record the arguments
of ``create`` and run them through the SDK's own conversion to the API's ``HostConfig``.
GPU passthrough itself cannot run on these CPU machines: these tests pin the request format
(an NVIDIA device request for exactly the assigned GPUs) that Docker's NVIDIA runtime honours.
"""
from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest
from docker.models.containers import ContainerCollection, _create_container_args

from joulebench.spec import ExperimentSpec
from joulebench.runners.base import Experiment
from joulebench.runners.docker.client import engine_available
from joulebench.runners.docker.mounts import (CONTAINER_EXPERIMENT, CONTAINER_HF_CACHE, CONTAINER_OUT, CONTAINER_TOKEN,
                                              local_paths)
from joulebench.runners.docker.request import IMAGE_UID, LABEL_EXPERIMENT, LABEL_STUDY, ContainerSettings, backend_of
from joulebench.runners.docker.runner import DockerRunner

GPU_UUIDS = ["GPU-3b0a7c1e-51a4-4e0c-9f3e-0d1c2b3a4f50", "GPU-8c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f"]


class RecordingContainers(ContainerCollection):
    """The SDK's collection, recording create() and refusing it like an engine would (no engine here)."""

    def __init__(self, client):
        super().__init__(client=client)
        self.created: list[dict] = []
        self.host_configs: list[dict] = []

    def create(self, image, command=None, **kwargs):
        kwargs["image"], kwargs["command"] = image, command
        self.created.append(dict(kwargs))
        # the SDK's own translation to the API's HostConfig, as ContainerCollection.create does it
        create_kwargs = _create_container_args({**kwargs, "version": self.client.api._version})
        self.host_configs.append(create_kwargs["host_config"])
        raise docker.errors.APIError("engine refused: recorded only", explanation="recorded only")

    def get(self, name):
        raise docker.errors.NotFound(f"no container {name}")


class RecordingClient(docker.DockerClient):
    def __init__(self):
        super().__init__(base_url="unix:///nonexistent/docker.sock", version="1.41")
        self._recording = RecordingContainers(self)

    @property
    def containers(self):
        return self._recording


def _spec(backend="vllm", model="synthetic:tiny-llama", **extra) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {"experiment_id": "r0-abc-001", "study": "gpu-study", "round": 0,
         "base_dir": extra.pop("base_dir", "/nonexistent"),
         "trials": [{"trial_id": "t1", "config_id": "c1", "repeat": 0, "round": 0,
                     "params": {"backend": backend, "model": model, **extra}}],
         "measurement": {}})


def _experiment(tmp_path: Path, gpus=None, **spec_kw) -> Experiment:
    spec = _spec(**spec_kw)
    return Experiment(experiment_id="r0-abc-001", study_name="gpu-study", study_dir=tmp_path / "study",
                      spec=spec, trial_ids=["t1"], gpus=list(gpus or []))


@pytest.fixture(autouse=True)
def _no_host_hf(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))


def test_gpu_experiment_sends_exactly_the_nvidia_request_mounts_and_isolation(tmp_path, monkeypatch):
    model_dir = tmp_path / "models" / "llama"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value_123")

    client = RecordingClient()
    runner = DockerRunner(client=client, images={"vllm": "joulebench-vllm:abc123"})
    exp = _experiment(tmp_path, gpus=GPU_UUIDS, backend="vllm", model=str(model_dir))
    out = runner.run_experiment(exp, on_event=lambda e: None, timeout_s=60)

    assert out.error_kind == "infrastructure" and "recorded only" in out.error
    assert len(client.containers.created) == 1
    kw = client.containers.created[0]
    hc = client.containers.host_configs[0]

    # GPUs: one NVIDIA device request for exactly the assigned GPUs, by UUID.
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": GPU_UUIDS,
                                     "Capabilities": [["gpu"]], "Options": {}}]
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in hc["Ulimits"]} == {
        "memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert kw["environment"]["JOULEBENCH_ASSIGNED_GPUS"] == ",".join(GPU_UUIDS)
    # vLLM exchanges tensors through /dev/shm: the large size.
    assert hc["ShmSize"] == 16 * 1024 ** 3
    # Isolation.
    assert hc["NetworkMode"] == "none"
    assert kw["privileged"] is False and hc.get("Privileged", False) is False
    assert hc["CapDrop"] == ["ALL"]
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["Init"] is True
    assert hc["ReadonlyRootfs"] is True
    assert hc["PidsLimit"] == 4096
    assert hc["Memory"] == 16 * 1024 ** 3
    assert "/tmp" in hc["Tmpfs"]
    assert "IpcMode" not in hc   # private IPC unless asked for
    assert kw["user"] in (f"{IMAGE_UID}:{IMAGE_UID}", f"{__import__('os').getuid()}:{__import__('os').getgid()}")
    # Labels.
    assert kw["labels"][LABEL_STUDY] == "gpu-study" and kw["labels"][LABEL_EXPERIMENT] == "r0-abc-001"
    # Mounts: experiment read-only, output read-write, HF cache and model read-only, token as a file.
    mounts = {m["Target"]: m for m in hc["Mounts"]}
    staging = tmp_path / "study" / ".staging" / "r0-abc-001"
    assert mounts[CONTAINER_EXPERIMENT] == {"Target": CONTAINER_EXPERIMENT, "Source": str(staging / "experiment.json"),
                                            "Type": "bind", "ReadOnly": True}
    assert mounts[CONTAINER_OUT]["Source"] == str(staging / "out") and mounts[CONTAINER_OUT]["ReadOnly"] is False
    assert mounts[CONTAINER_HF_CACHE]["Source"] == str(hub) and mounts[CONTAINER_HF_CACHE]["ReadOnly"] is True
    assert mounts[str(model_dir)]["Source"] == str(model_dir) and mounts[str(model_dir)]["ReadOnly"] is True
    assert mounts[CONTAINER_TOKEN]["ReadOnly"] is True
    assert set(mounts) == {CONTAINER_EXPERIMENT, CONTAINER_OUT, CONTAINER_HF_CACHE, str(model_dir), CONTAINER_TOKEN}
    assert all(m["Type"] == "bind" for m in hc["Mounts"])
    assert kw["environment"]["HF_HUB_CACHE"] == CONTAINER_HF_CACHE
    assert kw["environment"]["HF_TOKEN_PATH"] == CONTAINER_TOKEN
    # The token is never in the environment, the labels, the command, the log or the study folder.
    sent = json.dumps(kw, default=str)
    assert "hf_secret_token_value_123" not in sent
    assert kw["command"] == ["python", "-m", "joulebench.worker.main", CONTAINER_EXPERIMENT, "--out", CONTAINER_OUT]
    for p in (tmp_path / "study").rglob("*"):
        if p.is_file():
            assert "hf_secret_token_value_123" not in p.read_text(errors="replace")
    # The secret file and the staging folder are gone afterwards.
    assert not Path(mounts[CONTAINER_TOKEN]["Source"]).exists()
    assert not staging.exists()


def test_cpu_experiment_has_no_device_request_and_small_shm(tmp_path):
    client = RecordingClient()
    runner = DockerRunner(client=client, images={"transformers": "joulebench-transformers:abc"})
    runner.run_experiment(_experiment(tmp_path, backend="transformers"), on_event=lambda e: None, timeout_s=None)
    hc = client.containers.host_configs[0]
    assert "DeviceRequests" not in hc or not hc["DeviceRequests"]
    assert "Ulimits" not in hc or not hc["Ulimits"]
    assert hc["ShmSize"] == 1024 ** 3
    assert client.containers.created[0]["image"] == "joulebench-transformers:abc"


def test_runner_gpus_override_and_ipc_setting(tmp_path):
    client = RecordingClient()
    runner = DockerRunner(client=client, images={"vllm": "img:1"}, gpus=["2"],
                          settings=ContainerSettings(ipc_mode="host", mem_limit=None))
    runner.run_experiment(_experiment(tmp_path, gpus=GPU_UUIDS), on_event=lambda e: None, timeout_s=None)
    hc = client.containers.host_configs[0]
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["2"]
    assert hc["IpcMode"] == "host"
    assert "Memory" not in hc


def test_relative_model_path_resolves_against_base_dir(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "prompts.jsonl").write_text("{}\n")
    spec = _spec(model="m.gguf", base_dir=str(tmp_path), dataset_path="prompts.jsonl", prompt="/etc")
    assert local_paths(spec) == [tmp_path / "m.gguf", tmp_path / "prompts.jsonl"]
    # hub ids, synthetic models and missing files are not mounted; a folder covers its files
    assert local_paths(_spec(model="HuggingFaceTB/SmolLM2-135M")) == []
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.gguf").write_bytes(b"x")
    spec = _spec(model=str(tmp_path / "d"))
    spec = spec.model_copy(update={"trials": [*spec.trials, spec.trials[0].model_copy(
        update={"params": {"model": str(tmp_path / "d" / "w.gguf")}})]})
    assert local_paths(spec) == [tmp_path / "d"]


def test_backend_of_reads_the_trials():
    assert backend_of(_spec(backend="vllm")) == "vllm"
    assert backend_of(_spec().model_copy(update={"trials": []})) == "transformers"


def test_engine_available_is_false_fast_for_a_dead_socket(tmp_path, monkeypatch):
    import socket
    import time

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))   # bound, never listening: connect is refused
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    t0 = time.monotonic()
    assert engine_available(timeout_s=0.5) is False
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'missing.sock'}")
    assert engine_available() is False
    assert time.monotonic() - t0 < 2
    s.close()


def test_transient_errors_are_retried_a_bounded_number_of_times(caplog):
    import requests

    from joulebench.runners.docker.client import call as _call

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("engine restarting")
        return "ok"

    assert _call(flaky) == "ok" and len(calls) == 3
    assert "Retrying" in caplog.text or "retry" in caplog.text.lower()

    calls.clear()

    def always_down():
        calls.append(1)
        raise requests.exceptions.ConnectionError("down")

    with pytest.raises(requests.exceptions.ConnectionError):
        _call(always_down, attempts=3)
    assert len(calls) == 3

    calls.clear()

    def permanent():
        calls.append(1)
        raise docker.errors.ImageNotFound("no such image: x")

    with pytest.raises(docker.errors.ImageNotFound):
        _call(permanent)
    assert len(calls) == 1


def test_progress_follows_the_workers_events_and_judges_the_end():
    from joulebench.runners.docker.live import Progress, failure
    from joulebench.spec import ExperimentEndEvent, ExperimentStartEvent, TrialEndEvent, TrialStartEvent

    p = Progress("e1")
    assert p.take(ExperimentStartEvent(experiment_id="other")) is None and not p.started
    p.take(ExperimentStartEvent(experiment_id="e1"))
    p.take(TrialStartEvent(trial_id="t1"))
    assert p.started and p.in_flight == "t1"
    assert p.take(TrialEndEvent(trial_id="t1", status="ok")) == "t1"
    assert p.in_flight is None and p.ended == {"t1"}
    p.take(TrialStartEvent(trial_id="t2"))
    assert p.in_flight == "t2" and not p.ended_cleanly
    # the container died mid-trial
    assert failure(p, exit_code=137, ended=True, until_end=True) == ("worker exited with code 137", "crash")
    assert failure(p, exit_code=0, ended=True, until_end=True) == (
        "the container ended before it finished the experiment", "crash")
    assert failure(p, exit_code=0, ended=True, until_end=False) is None
    p.take(ExperimentEndEvent(experiment_id="e1"))
    assert p.ended_cleanly
    assert failure(p, exit_code=None, ended=False, until_end=True) is None
    # exit 3 after the end event: the load failed and the worker recorded it in the trials
    assert failure(p, exit_code=3, ended=True, until_end=True) is None
    assert failure(p, exit_code=3, ended=True, until_end=False) == ("worker exited with code 3", "crash")
