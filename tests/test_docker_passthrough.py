"""GPUs into containers the way each engine takes them, and never a silent CPU fallback.

* A ``device: cuda:1`` study with two fake GPUs (the fake NVML at the hardware boundary) through the
  recording Docker API: answering as Docker, the create request holds exactly GPU 1's UUID in one NVIDIA
  device request; answering as Podman (whose Docker API ignores device requests), exactly GPU 1's device
  node (by its NVML minor number), nvidiactl and nvidia-uvm, and a read-only bind of the driver folder.
* Against the real Podman service (``containers``): the device-node request as Podman's own inspect shows
  it, and a real container whose worker was assigned a GPU it cannot see fails its trial with
  ``gpu-unavailable``, naming what the engine is missing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from joulebench.results.store import StudyStore
from joulebench.study.run import run_study

from .conftest import tiny_study
from .docker_api import FakeDockerApi, FakeEngine

UUIDS = ["GPU-0a0a0a0a-0000-4000-8000-000000000000", "GPU-1b1b1b1b-0000-4000-8000-000000000001"]
MINORS = [3, 7]      # /dev/nvidia<minor> need not follow NVML's index
PODMAN_VERSION = {"Platform": {"Name": "linux/amd64/debian-12"}, "Version": "4.3.1", "ApiVersion": "1.41",
                  "MinAPIVersion": "1.24",
                  "Components": [{"Name": "Podman Engine", "Version": "4.3.1", "Details": {}}]}
DOCKER_VERSION = {"Platform": {"Name": "Docker Engine - Community"}, "Version": "20.10.24", "ApiVersion": "1.41",
                  "MinAPIVersion": "1.12", "Components": [{"Name": "Engine", "Version": "20.10.24"}]}


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    spec = {"gpus": [{"uuid": u, "minor_number": m, "power_w": 80.0} for u, m in zip(UUIDS, MINORS)]}
    path = tmp_path / "fake-nvml.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def driver_dir(tmp_path):
    d = tmp_path / "nvidia-driver"
    (d / "lib64").mkdir(parents=True)
    (d / "lib64" / "libcuda.so.1").write_bytes(b"not a real driver")
    return d


def _gpu_study(write_study, tmp_path, monkeypatch, version, docker_opts):
    study = tiny_study("passthrough", device="cuda:1", runner="docker",
                       runner_options={"reuse_workers": False, "docker": {"image": "jb-test:gpu", **docker_opts}})
    with FakeDockerApi(FakeEngine(version=version)) as api:
        monkeypatch.setenv("DOCKER_HOST", api.docker_host)
        res = run_study(write_study(study), out=tmp_path / "out", quiet=True, report=False)
    assert api.created
    return res, api.created


def _env(body) -> dict[str, str]:
    return dict(e.split("=", 1) for e in body["Env"])


def test_docker_engine_gets_one_device_request_for_exactly_gpu_1(two_gpus, write_study, tmp_path, monkeypatch):
    res, created = _gpu_study(write_study, tmp_path, monkeypatch, DOCKER_VERSION, {})
    for c in created:
        hc = c.body["HostConfig"]
        assert hc["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [UUIDS[1]],
                                         "Capabilities": [["gpu"]], "Options": {}}]
        assert not hc.get("Devices")
        env = _env(c.body)
        assert env["JOULEBENCH_GPU_PASSTHROUGH"] == "device-request"
        assert env["JOULEBENCH_CONTAINER_ENGINE"] == "Docker 20.10.24"
        assert env["JOULEBENCH_ASSIGNED_GPUS"] == UUIDS[1] and env["JOULEBENCH_RUNNER"] == "docker"
        assert c.experiment_spec["worker_device"] == "cuda:0"
    assert res.exit_code != 0   # the fake container "ran" and failed: nothing measured


def test_podman_engine_gets_exactly_gpu_1s_device_node_and_the_driver_bind(two_gpus, driver_dir, write_study,
                                                                          tmp_path, monkeypatch):
    opts = {"driver_dir": str(driver_dir), "python": "python3", "env": {"EXTRA": "1"},
            "mounts": [{"source": str(tmp_path), "target": "/data", "read_only": True}]}
    res, created = _gpu_study(write_study, tmp_path, monkeypatch, PODMAN_VERSION, opts)
    for c in created:
        hc = c.body["HostConfig"]
        assert not hc.get("DeviceRequests")      # Podman's Docker API would ignore it silently
        nodes = {(d["PathOnHost"], d["PathInContainer"]) for d in hc["Devices"]}
        gpu_nodes = {p for p, _ in nodes if p.startswith("/dev/nvidia") and p[len("/dev/nvidia"):].isdigit()}
        assert gpu_nodes == {f"/dev/nvidia{MINORS[1]}"}           # GPU 1's node only, by NVML minor number
        assert ("/dev/nvidiactl", "/dev/nvidiactl") in nodes and ("/dev/nvidia-uvm", "/dev/nvidia-uvm") in nodes
        assert all(d["CgroupPermissions"] == "rwm" for d in hc["Devices"])
        mounts = {m["Target"]: m for m in hc["Mounts"]}
        assert mounts[str(driver_dir)]["Source"] == str(driver_dir) and mounts[str(driver_dir)]["ReadOnly"]
        assert mounts["/data"]["Source"] == str(tmp_path) and mounts["/data"]["ReadOnly"]
        env = _env(c.body)
        assert env["LD_LIBRARY_PATH"] == str(driver_dir / "lib64")
        assert env["JOULEBENCH_GPU_PASSTHROUGH"] == "device-nodes" and env["EXTRA"] == "1"
        assert env["JOULEBENCH_CONTAINER_ENGINE"] == "Podman 4.3.1"
        assert c.body["Cmd"][0] == "python3"
        assert not any(u["Name"] == "memlock" for u in hc.get("Ulimits") or [])   # Podman keeps its own limits
    assert res.exit_code != 0


def test_engine_is_told_apart_from_its_version_document():
    from joulebench.runners.docker.gpu import EngineInfo, engine_info_of, resolve_method

    assert engine_info_of(PODMAN_VERSION) == EngineInfo("Podman", "4.3.1", "1.41")
    assert engine_info_of(DOCKER_VERSION) == EngineInfo("Docker", "20.10.24", "1.41")
    assert resolve_method("auto", engine_info_of(PODMAN_VERSION)) == "device-nodes"
    assert resolve_method("auto", engine_info_of(DOCKER_VERSION)) == "device-request"
    assert resolve_method("device-request", engine_info_of(PODMAN_VERSION)) == "device-request"


def test_docker_options_are_validated_with_clear_errors():
    from pydantic import ValidationError

    from joulebench.config.runner import RunnerOptions

    ok = RunnerOptions.model_validate({"docker": {"mounts": [{"source": "/usr", "target": "/usr"}],
                                                  "env": {"PYTHONPATH": "/x"}, "python": "python3",
                                                  "gpu_passthrough": "device-nodes", "user": "0:0"}})
    assert ok.docker.mounts[0].read_only is True and ok.docker.python == "python3"
    for bad, words in [({"mounts": [{"source": "usr", "target": "/usr"}]}, "absolute path"),
                       ({"mounts": [{"source": "/usr", "target": "usr"}]}, "absolute path"),
                       ({"env": {"HF_TOKEN": "hf_secret"}}, "looks like a secret"),
                       ({"env": {"1BAD": "x"}}, "not a valid variable name"),
                       ({"driver_dir": "lib"}, "absolute path"),
                       ({"gpu_passthrough": "magic"}, "device-nodes"),
                       ({"python": "python -X"}, "no spaces"),
                       ({"user": "root"}, "UID")]:
        with pytest.raises(ValidationError) as e:
            RunnerOptions.model_validate({"docker": bad})
        assert words in str(e.value), (bad, str(e.value))


def test_worker_assigned_an_invisible_gpu_fails_with_the_missing_piece(two_gpus, monkeypatch):
    from joulebench.testing import install_from_environment
    from joulebench.worker.gpus import GpuUnavailable, check_assigned_gpus

    install_from_environment()
    monkeypatch.setenv("JOULEBENCH_ASSIGNED_GPUS", UUIDS[1])
    (dev,) = check_assigned_gpus(cuda_check=False)      # visible: metered by its UUID
    assert dev.info.uuid == UUIDS[1]
    monkeypatch.setenv("JOULEBENCH_ASSIGNED_GPUS", "GPU-not-here")
    monkeypatch.setenv("JOULEBENCH_GPU_PASSTHROUGH", "device-request")
    monkeypatch.setenv("JOULEBENCH_CONTAINER_ENGINE", "Podman 4.3.1")
    with pytest.raises(GpuUnavailable, match="Podman ignores device requests through its Docker API"):
        check_assigned_gpus(cuda_check=False)
    monkeypatch.setenv("JOULEBENCH_CONTAINER_ENGINE", "Docker 20.10.24")
    with pytest.raises(GpuUnavailable, match="nvidia-container-toolkit"):
        check_assigned_gpus(cuda_check=False)
    monkeypatch.setenv("JOULEBENCH_GPU_PASSTHROUGH", "device-nodes")
    with pytest.raises(GpuUnavailable, match="device nodes"):
        check_assigned_gpus(cuda_check=False)
    monkeypatch.delenv("JOULEBENCH_ASSIGNED_GPUS")
    assert check_assigned_gpus() == []


# --------------------------------------------------------------------------- the real Podman service

def _podman_client(monkeypatch):
    from joulebench.runners.docker.client import connect, engine_available
    from joulebench.runners.docker.gpu import engine_info

    host = os.environ.get("JOULEBENCH_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    if host:
        monkeypatch.setenv("DOCKER_HOST", host)
    if not engine_available(timeout_s=2):
        pytest.skip("no container engine answers (scripts/podman-setup.sh and DOCKER_HOST)")
    client = connect()
    if not engine_info(client).is_podman:
        client.close()
        pytest.skip("the engine is not Podman")
    return client


BASE_IMAGE = os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")


@pytest.mark.containers
def test_real_podman_takes_exactly_gpu_1s_device_nodes(two_gpus, driver_dir, tmp_path, monkeypatch):
    """The real Podman service takes the device-node request: inside the container exactly GPU 1's node,
    nvidiactl and nvidia-uvm, the driver folder bound read-only and on LD_LIBRARY_PATH. The nodes are real
    character devices with NVIDIA's major numbers in a stand-in /dev (no driver behind them)."""
    from joulebench.runners.base import Experiment
    from joulebench.runners.docker.gpu import DeviceNodes, Passthrough, engine_info
    from joulebench.runners.docker.request import ContainerSettings, container_kwargs
    from joulebench.config.study import MeasurementConfig
    from joulebench.spec import ExperimentSpec, TrialSpec
    from joulebench.testing import install_from_environment

    install_from_environment()
    client = _podman_client(monkeypatch)
    dev = tmp_path / "dev"
    dev.mkdir()
    for name, minor in [(f"nvidia{MINORS[0]}", MINORS[0]), (f"nvidia{MINORS[1]}", MINORS[1]),
                        ("nvidiactl", 255), ("nvidia-uvm", 0)]:
        os.mknod(dev / name, 0o20666, os.makedev(195 if name.startswith("nvidia") and name != "nvidia-uvm" else 511,
                                                  minor))
    spec = ExperimentSpec(experiment_id="e1", study="pt", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="t1", config_id="c", repeat=0, round=0,
                                            params={"backend": "transformers", "device": "cuda:1"})])
    staging = tmp_path / "staging"
    (staging / "out").mkdir(parents=True)
    (staging / "experiment.json").write_text(spec.to_json())
    exp = Experiment(experiment_id="e1", study_name="pt", study_dir=tmp_path / "study", spec=spec, trial_ids=["t1"])
    pt = Passthrough("device-nodes", engine_info(client), DeviceNodes(dev_dir=str(dev), driver_dir=str(driver_dir)))
    kw = container_kwargs(exp, image=BASE_IMAGE, staging=staging, gpus=[UUIDS[1]], settings=ContainerSettings(),
                          passthrough=pt, mount_hf_cache=False)
    kw["name"] = f"jb-pt-{os.getpid()}"
    try:
        client.containers.get(kw["name"]).remove(force=True)
    except Exception:
        pass
    # Podman 4.3's inspect leaves HostConfig.Devices empty, so look inside: the container lists its nodes.
    kw["command"] = ["sh", "-c", 'for f in /dev/nvidia*; do stat -c "%n %t %T" "$f"; done; '
                                 'echo "LD=$LD_LIBRARY_PATH"; ls "$LD_LIBRARY_PATH"']
    c = client.containers.create(**kw)
    try:
        mounts = {m["Destination"]: m for m in client.api.inspect_container(c.id)["Mounts"]}
        assert mounts[str(driver_dir)]["Source"] == str(driver_dir) and mounts[str(driver_dir)]["RW"] is False
        c.start()
        assert c.wait(timeout=60)["StatusCode"] == 0
        out = c.logs().decode()
    finally:
        c.remove(force=True)
        client.close()
    nodes = {line.split()[0]: (int(line.split()[1], 16), int(line.split()[2], 16))
             for line in out.splitlines() if line.startswith("/dev/nvidia")}
    assert nodes == {f"/dev/nvidia{MINORS[1]}": (195, MINORS[1]), "/dev/nvidiactl": (195, 255),
                     "/dev/nvidia-uvm": (511, 0)}, out        # GPU 1's node only, never GPU 0's
    assert f"LD={driver_dir / 'lib64'}" in out and "libcuda.so.1" in out


@pytest.mark.containers
def test_real_container_assigned_an_unseen_gpu_fails_its_trial_loudly(two_gpus, write_study, tmp_path, monkeypatch):
    """The old request (a device request only) through Podman's Docker API: ignored, so the worker in the
    real container has no GPU; its trial fails with gpu-unavailable instead of measuring the CPU."""
    client = _podman_client(monkeypatch)
    client.close()
    study = tiny_study("loud", device="cuda:1", runner="docker",
                       runner_options={"reuse_workers": False,
                                       "docker": _host_python_options(gpu_passthrough="device-request")})
    res = run_study(write_study(study), out=tmp_path / "out", quiet=True, report=False)
    recs = list(StudyStore(tmp_path / "out").records_by_id().values())
    assert res.exit_code != 0 and recs
    for r in recs:
        assert r["status"] == "failed" and r["error_kind"] == "gpu-unavailable", r.get("error")
        assert UUIDS[1] in r["error"] and "Podman ignores device requests through its Docker API" in r["error"]
        assert r["environment"]["runner"]["gpu_passthrough"] == "device-request"
        assert r["environment"]["runner"]["container_engine"].startswith("Podman")
        assert r.get("energy_j") is None                  # nothing measured on the CPU
    starts = [json.loads(line) for line in (tmp_path / "out" / "containers.jsonl").read_text().splitlines()]
    assert len(starts) == 1 and starts[0]["start_to_ready_s"] > 0


def _host_python_options(**extra) -> dict:
    """The engine's base image running this interpreter and this checkout, bound read-only (as the GPU
    hosts run their own /usr in a tiny image)."""
    prefix = os.path.realpath(sys.base_prefix)
    src = Path(__file__).resolve().parents[1] / "src"
    mounts = [{"source": p, "target": p} for p in dict.fromkeys([prefix, sys.prefix])]
    mounts.append({"source": str(src), "target": "/jb-src"})
    pythonpath = ":".join(["/jb-src"] + [p for p in sys.path if p.startswith((prefix, sys.prefix))])
    return {"image": BASE_IMAGE, "python": sys.executable, "user": "0:0", "mounts": mounts,
            "env": {"PYTHONPATH": pythonpath}, **extra}


@pytest.mark.containers
def test_one_container_serves_every_round_and_its_start_cost_is_recorded(tmp_path, monkeypatch):
    """Two rounds, one container: one start (containers.jsonl), one worker, one model load; the records
    say runner docker, the engine and the image."""
    client = _podman_client(monkeypatch)
    client.close()
    study = tiny_study("reuse", runner="docker", repeats=2,
                       runner_options={"docker": _host_python_options()})
    res = run_study(study, out=tmp_path / "out", quiet=True, report=False)
    recs = list(StudyStore(tmp_path / "out").records_by_id().values())
    assert res.exit_code == 0 and len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert len({r["worker_id"] for r in recs}) == 1 and len({r["experiment_id"] for r in recs}) == 2
    starts = [json.loads(line) for line in (tmp_path / "out" / "containers.jsonl").read_text().splitlines()]
    assert len(starts) == 1 and 0 < starts[0]["start_to_ready_s"] < 120
    runner = recs[0]["environment"]["runner"]
    assert runner["kind"] == "docker" and runner["image"] == BASE_IMAGE and runner["image_id"].startswith("sha256:")
    assert runner["container_engine"].startswith("Podman") and "gpu_passthrough" not in runner   # a CPU study


@pytest.mark.containers
def test_doctor_probes_the_gpu_as_the_runner_passes_it_and_names_the_fix(two_gpus, monkeypatch):
    """A real probe container on Podman: the old device request is ignored (NVML sees nothing inside:
    the fix names device-nodes); device nodes that this host lacks are refused by the engine (the fix
    names the nodes and the driver bind)."""
    from joulebench.cli import doctor
    from joulebench.testing import install_from_environment

    install_from_environment()
    client = _podman_client(monkeypatch)
    try:
        checks = {c.name: c for c in doctor.run_checks(client=client, probe_image=BASE_IMAGE,
                                                       gpu_passthrough="device-request", python="python3")}
        probe = checks["GPU inside a container"]
        assert probe.ok is False and "saw 0 of 2 GPU(s)" in probe.detail and "device-request" in probe.detail
        assert "Podman ignores device requests through its Docker API" in probe.fix
        checks = {c.name: c for c in doctor.run_checks(client=client, probe_image=BASE_IMAGE, python="python3")}
        probe = checks["GPU inside a container"]
        assert probe.ok is False and "device-nodes" in probe.detail and "device nodes" in probe.fix
    finally:
        client.close()


@pytest.mark.containers
def test_a_container_kept_between_rounds_is_ours_to_the_busy_gate(monkeypatch, tmp_path):
    """Seen on an H100: round 2 of a docker-runner study waited on "GPUs in use by others: pid N" where N was
    the worker in joulebench's own kept container. The runner names the container's host PIDs (the engine's
    State.Pid and every process below it): a real Podman container running a real process."""
    import threading
    import time as _time

    from joulebench.runners.docker.live import LiveContainer
    from joulebench.runners.docker.runner import DockerRunner

    client = _podman_client(monkeypatch)
    runner = DockerRunner(client=client)
    assert runner.live_pids() == set()                  # nothing kept: nothing of ours
    container = client.containers.run(BASE_IMAGE, ["sh", "-c", "sleep 60 & wait"], detach=True,
                                      network_mode="none", labels={"joulebench.test": "live-pids"})
    stop = threading.Event()
    try:
        live = LiveContainer(key="k", staging=tmp_path, container=container)
        live.waiter = threading.Thread(target=stop.wait, daemon=True)
        live.waiter.start()
        runner._worker = live
        deadline = _time.monotonic() + 10
        pids: set[int] = set()
        while _time.monotonic() < deadline:
            pids = runner.live_pids()
            if len(pids) >= 2:
                break
            _time.sleep(0.1)
        container.reload()
        assert container.attrs["State"]["Pid"] in pids
        cmdlines = {Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in pids
                    if Path(f"/proc/{p}/cmdline").exists()}
        assert any(c.startswith("sleep 60") for c in cmdlines), cmdlines   # the process below it too
        stop.set()
        live.waiter.join()
        assert runner.live_pids() == set()             # a container no longer followed is not ours
    finally:
        stop.set()
        runner._worker = None
        container.remove(force=True)
        client.close()


@pytest.mark.containers
def test_probe_keeps_seccomp_unless_told_and_runs_as_the_user_given(monkeypatch):
    """run_probe's isolation has the engine's seccomp filter; extra_security_opt adds to it (container_probe's
    'unconfined' variant measures seccomp's share that way) and user sets the probe's uid."""
    from joulebench.runners.docker.client import run_probe

    client = _podman_client(monkeypatch)
    try:
        cmd = ["sh", "-c", "grep Seccomp: /proc/self/status; id -u"]
        code, out = run_probe(client, BASE_IMAGE, cmd, user="4321")
        assert code == 0 and out.split() == ["Seccomp:", "2", "4321"], out
        code, out = run_probe(client, BASE_IMAGE, cmd, user="4321", extra_security_opt=["seccomp=unconfined"])
        assert code == 0 and out.split() == ["Seccomp:", "0", "4321"], out
    finally:
        client.close()
