"""``gpu_passthrough: cdi``: GPUs by CDI device name, containers through Podman's own (libpod) API.

* CDI specs (YAML and JSON, as nvidia-ctk writes them) map the experiment's GPUs to
  ``nvidia.com/gpu=<UUID>`` where the spec has the UUID name, else ``=<index>``; never ``all``; a GPU
  without a device, or no spec, is a clear error naming the folders read and the fix.
* The runner's ``containers.create`` arguments become libpod's SpecGenerator: every argument the runner
  passes maps; one it does not know raises, never dropped.
* A ``device: cuda:1`` study with two fake GPUs through the recording API answering as Podman: one libpod
  create with exactly GPU 1's CDI name; answering as Docker: refused before any container.
* Against the real Podman service (``containers``): a stand-in CDI device (``/dev/null`` as
  ``/dev/nvidia-fake0`` plus an environment variable, in a uniquely named spec under ``/var/run/cdi``,
  the folders Podman 4.3 reads) reaches a container created through the cdi path with the runner's
  isolation intact; a tiny study whose worker sees no GPU behind the stand-in fails with gpu-unavailable.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from joulebench.errors import JoulebenchError
from joulebench.results.store import StudyStore
from joulebench.runners.docker import cdi
from joulebench.runners.docker.gpu import EngineInfo, HostGpu, Passthrough, resolve_method
from joulebench.runners.docker.libpod import CDI_DEVICES, TRANSLATE, LibpodTranslationError, spec_generator
from joulebench.study.run import run_study

from .conftest import tiny_study
from .docker_api import FakeDockerApi, FakeEngine
from .test_docker_passthrough import (BASE_IMAGE, DOCKER_VERSION, PODMAN_VERSION, UUIDS, _host_python_options,
                                      _podman_client, two_gpus)  # noqa: F401 - two_gpus is a fixture

PODMAN = EngineInfo("Podman", "4.3.1", "1.41")
DOCKER = EngineInfo("Docker", "20.10.24", "1.41")
TABLE = [HostGpu(0, UUIDS[0], 3), HostGpu(1, UUIDS[1], 7)]

BOTH_YAML = f"""\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits: {{deviceNodes: [{{path: /dev/nvidia3}}]}}
- name: "1"
  containerEdits: {{deviceNodes: [{{path: /dev/nvidia7}}]}}
- name: {UUIDS[0]}
  containerEdits: {{deviceNodes: [{{path: /dev/nvidia3}}]}}
- name: {UUIDS[1]}
  containerEdits: {{deviceNodes: [{{path: /dev/nvidia7}}]}}
- name: all
  containerEdits: {{deviceNodes: [{{path: /dev/nvidia3}}, {{path: /dev/nvidia7}}]}}
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
"""


def _index_only_json() -> str:
    return json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [
        {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia3"}]}},
        {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia7"}]}},
        {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia3"}]}}]})


def _uuid_only_yaml() -> str:
    return (f"cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: {UUIDS[1]}\n"
            "  containerEdits: {deviceNodes: [{path: /dev/nvidia7}]}\n")


def _no_table():
    raise AssertionError("the host's GPU table was not needed here")


# --------------------------------------------------------------------------- spec reading and names

def test_uuid_names_are_preferred_and_the_index_is_the_fallback(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    (both / "nvidia.yaml").write_text(BOTH_YAML)
    assert cdi.device_names([UUIDS[1]], dirs=[str(both)], table_of=_no_table) == [f"nvidia.com/gpu={UUIDS[1]}"]
    # a host index, where the spec names the UUID too: the UUID (from the host's table)
    assert cdi.device_names(["1"], dirs=[str(both)], table=TABLE) == [f"nvidia.com/gpu={UUIDS[1]}"]
    # ... and without NVML only the index can be named
    assert cdi.device_names(["1"], dirs=[str(both)], table=[]) == ["nvidia.com/gpu=1"]

    index_only = tmp_path / "index"
    index_only.mkdir()
    (index_only / "nvidia.json").write_text(_index_only_json())
    assert cdi.device_names([UUIDS[1], UUIDS[0]], dirs=[str(index_only)], table=TABLE) == \
        ["nvidia.com/gpu=1", "nvidia.com/gpu=0"]            # in the experiment's order, never "all"
    assert cdi.device_names(["0"], dirs=[str(index_only)], table_of=_no_table) == ["nvidia.com/gpu=0"]

    uuid_only = tmp_path / "uuid"
    uuid_only.mkdir()
    (uuid_only / "nvidia.yml").write_text(_uuid_only_yaml())
    assert cdi.device_names(["1"], dirs=[str(uuid_only)], table=TABLE) == [f"nvidia.com/gpu={UUIDS[1]}"]
    assert cdi.device_names([], dirs=[str(uuid_only)]) == []


def test_a_gpu_without_a_cdi_device_names_the_folders_and_the_fix(tmp_path):
    d = tmp_path / "cdi"
    d.mkdir()
    (d / "nvidia.yml").write_text(_uuid_only_yaml())
    (d / "broken.yaml").write_text("kind: [unclosed\n")
    (d / "README").write_text("not a spec")
    with pytest.raises(cdi.CdiError) as e:
        cdi.device_names([UUIDS[0]], dirs=[str(d), str(tmp_path / "absent")], table=TABLE)
    msg = str(e.value)
    assert f"GPU {UUIDS[0]} has no nvidia.com/gpu device" in msg
    assert str(d) in msg and str(tmp_path / "absent") in msg and str(d / "nvidia.yml") in msg
    assert "broken.yaml" in msg                                          # named as unreadable
    assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in msg
    assert UUIDS[1] in msg                                               # what the spec does name
    # "all" alone is no device for one GPU
    (d / "nvidia.yml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n"
                                  "  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}\n")
    with pytest.raises(cdi.CdiError, match="has no nvidia.com/gpu device"):
        cdi.device_names(["0"], dirs=[str(d)], table=TABLE)


def test_no_cdi_spec_at_all_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "fpga.yaml").write_text("cdiVersion: 0.5.0\nkind: vendor.com/fpga\ndevices:\n- name: a\n"
                                     "  containerEdits: {deviceNodes: [{path: /dev/fpga0}]}\n")
    for dirs in ([str(empty)], [str(tmp_path / "missing")], [str(other)]):
        with pytest.raises(cdi.CdiError) as e:
            cdi.device_names([UUIDS[1]], dirs=dirs, table=TABLE)
        assert "no CDI spec names any nvidia.com/gpu device" in str(e.value) and dirs[0] in str(e.value)
        assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in str(e.value)


def test_a_later_folder_overrides_an_earlier_one_and_yaml_is_loaded_safely(tmp_path):
    a, b = tmp_path / "etc", tmp_path / "run"
    a.mkdir(), b.mkdir()
    (a / "nvidia.yaml").write_text(BOTH_YAML)
    (b / "nvidia.json").write_text(_index_only_json())
    specs = cdi.read_specs([str(a), str(b)])
    assert specs.names()["1"].spec_file == str(b / "nvidia.json")
    assert specs.names()[UUIDS[1]].spec_file == str(a / "nvidia.yaml")
    (b / "evil.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    specs = cdi.read_specs([str(b)])
    assert any("evil.yaml" in u for u in specs.unreadable) and str(b / "nvidia.json") in specs.files


# --------------------------------------------------------------------------- the method

def test_cdi_is_podmans_only_and_never_picked_by_auto():
    assert resolve_method("cdi", PODMAN) == "cdi"
    assert resolve_method("auto", PODMAN) == "device-nodes"
    assert resolve_method("auto", DOCKER) == "device-request"
    with pytest.raises(JoulebenchError, match="needs Podman.*use runner_options.docker.gpu_passthrough: "
                                              "device-request"):
        resolve_method("cdi", DOCKER)


def test_cdi_options_are_validated():
    from pydantic import ValidationError

    from joulebench.config.runner import RunnerOptions

    ok = RunnerOptions.model_validate({"docker": {"gpu_passthrough": "cdi", "cdi_spec_dirs": ["/etc/cdi"]}})
    assert ok.docker.gpu_passthrough == "cdi" and ok.docker.cdi_spec_dirs == ["/etc/cdi"]
    assert RunnerOptions.model_validate({}).docker.cdi_spec_dirs is None
    for bad, words in [({"cdi_spec_dirs": ["etc/cdi"]}, "absolute"), ({"cdi_spec_dirs": []}, "at least one"),
                       ({"gpu_passthrough": "magic"}, "cdi")]:
        with pytest.raises(ValidationError, match=words):
            RunnerOptions.model_validate({"docker": bad})


def test_the_worker_names_the_cdi_spec_when_its_gpu_did_not_arrive():
    from joulebench.worker.gpus import missing_piece

    advice = missing_piece("cdi", "Podman 4.3.1")
    assert "CDI spec" in advice and "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in advice


# --------------------------------------------------------------------------- SpecGenerator

def _experiment(tmp_path, device="cuda:1"):
    from joulebench.config.study import MeasurementConfig
    from joulebench.runners.base import Experiment
    from joulebench.spec import ExperimentSpec, TrialSpec

    spec = ExperimentSpec(experiment_id="e1", study="cdi", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="t1", config_id="c", repeat=0, round=0,
                                            params={"backend": "vllm", "device": device})])
    staging = tmp_path / "staging"
    (staging / "out").mkdir(parents=True)
    (staging / "experiment.json").write_text(spec.to_json())
    exp = Experiment(experiment_id="e1", study_name="cdi", study_dir=tmp_path / "study", spec=spec, trial_ids=["t1"])
    return exp, staging


def test_every_argument_the_runner_passes_maps_to_the_spec_generator(tmp_path):
    from joulebench.runners.docker.request import ContainerSettings, container_kwargs

    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.yaml").write_text(BOTH_YAML)
    exp, staging = _experiment(tmp_path)
    settings = ContainerSettings(ipc_mode="host", env={"EXTRA": "1"}, user="0:0",
                                 extra_mounts=[(str(tmp_path), "/data", True), (str(staging), "/rw", False)])
    # engine Docker on purpose (bypassing resolve_method): the GPU ulimits too, every argument there is
    pt = Passthrough("cdi", DOCKER, table=TABLE, cdi_spec_dirs=[str(spec_dir)])
    kw = container_kwargs(exp, image="img:1", staging=staging, gpus=[UUIDS[1]], settings=settings, passthrough=pt,
                          mount_hf_cache=False)
    assert set(kw) <= set(TRANSLATE) and "ulimits" in kw and kw[CDI_DEVICES] == [f"nvidia.com/gpu={UUIDS[1]}"]
    s = spec_generator(kw)
    assert s["image"] == "img:1" and s["command"] == kw["command"] and s["name"] == kw["name"]
    assert s["devices"] == [{"path": f"nvidia.com/gpu={UUIDS[1]}"}]
    assert s["env"]["EXTRA"] == "1" and s["env"]["JOULEBENCH_GPU_PASSTHROUGH"] == "cdi"
    assert s["env"]["JOULEBENCH_ASSIGNED_GPUS"] == UUIDS[1] and "LD_LIBRARY_PATH" not in s["env"]
    assert s["labels"] == kw["labels"] and s["labels"]["joulebench.runner"] == "docker"
    assert s["netns"] == {"nsmode": "none"} and s["ipcns"] == {"nsmode": "host"}
    assert s["user"] == "0:0" and s["work_dir"] == "/tmp" and s["stop_signal"] == 15
    assert s["cap_drop"] == ["ALL"] and s["no_new_privileges"] is True and s["privileged"] is False
    assert s["init"] is True and s["read_only_filesystem"] is True
    assert s["resource_limits"] == {"pids": {"limit": 4096}, "memory": {"limit": 16 * 2 ** 30}}
    assert s["shm_size"] == 16 * 2 ** 30                                   # vllm: the large /dev/shm
    assert {"type": "RLIMIT_MEMLOCK", "soft": 2 ** 64 - 1, "hard": 2 ** 64 - 1} in s["r_limits"]
    assert {"type": "RLIMIT_STACK", "soft": 67108864, "hard": 67108864} in s["r_limits"]
    mounts = {m["destination"]: m for m in s["mounts"]}
    assert mounts["/jb/experiment.json"] == {"destination": "/jb/experiment.json", "type": "bind", "options":
                                             ["rbind", "ro"], "source": str(staging / "experiment.json")}
    assert mounts["/jb/out"]["options"] == ["rbind", "rw"] and mounts["/rw"]["options"] == ["rbind", "rw"]
    assert mounts["/data"]["source"] == str(tmp_path) and "ro" in mounts["/data"]["options"]
    assert mounts["/tmp"] == {"destination": "/tmp", "source": "tmpfs", "type": "tmpfs",
                              "options": ["rw", "exec", "nosuid", "nodev", "size=4g", "mode=1777"]}
    # as Podman's Docker API gives a read-only root: /var/tmp and /run as tmpfs too (/tmp is the runner's)
    assert mounts["/run"]["type"] == mounts["/var/tmp"]["type"] == "tmpfs"


def test_the_probe_arguments_map_too(tmp_path):
    """run_probe's own arguments (doctor): image, command, detach, labels, environment, and the isolation."""
    from joulebench.runners.docker.request import isolation_kwargs

    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.json").write_text(_index_only_json())
    kw = isolation_kwargs(gpus=["0"], gpu_ulimits=False,
                          passthrough=Passthrough("cdi", PODMAN, table=TABLE, cdi_spec_dirs=[str(spec_dir)]))
    s = spec_generator(dict(image="img", command=["python3", "-c", "print(1)"], detach=True,
                            labels={"joulebench.runner": "probe"}, environment={"HOME": "/tmp"}, **kw))
    assert s["devices"] == [{"path": "nvidia.com/gpu=0"}] and s["command"][0] == "python3"
    assert "r_limits" not in s          # Podman keeps its own limits


def test_an_argument_without_a_translation_raises_and_is_never_dropped():
    base = {"image": "img", "command": ["true"]}
    for extra, words in [({"blkio_weight": 300}, "blkio_weight"),
                         ({"cpu_rt_runtime": 1}, "cpu_rt_runtime"),
                         ({"security_opt": ["systempaths=unconfined"]}, "systempaths=unconfined"),
                         ({"network_mode": "slirp4netns:port_handler=slirp4netns"}, "network_mode"),
                         ({"device_requests": [{"Driver": "nvidia"}]}, "CDI name"),
                         ({"mounts": [{"Target": "/v", "Source": "vol", "Type": "volume", "ReadOnly": False}]},
                          "type 'volume'"),
                         ({"mounts": [{"Target": "/v", "Source": "/x", "Type": "bind", "ReadOnly": False,
                                       "NoCopy": True}]}, "NoCopy"),
                         ({"volumes": {"named": {"bind": "/v", "mode": "rw"}}}, "named volumes")]:
        with pytest.raises(LibpodTranslationError, match=words):
            spec_generator({**base, **extra})
    with pytest.raises(LibpodTranslationError, match="no image"):
        spec_generator({"command": ["true"]})
    s = spec_generator({**base, "nano_cpus": 1_500_000_000, "volumes": ["/a:/b:ro"], "stop_signal": "SIGINT",
                        "security_opt": ["label=disable", "no-new-privileges:true"]})
    assert s["resource_limits"]["cpu"] == {"period": 100000, "quota": 150000}
    assert s["mounts"] == [{"destination": "/b", "source": "/a", "type": "bind", "options": ["rbind", "ro"]}]
    assert s["stop_signal"] == 2 and s["selinux_opts"] == ["disable"] and s["no_new_privileges"] is True


# --------------------------------------------------------------------------- a study through the recording API

def _cdi_study(write_study, tmp_path, monkeypatch, version, spec_dir):
    study = tiny_study("cdi", device="cuda:1", runner="docker",
                       runner_options={"reuse_workers": False,
                                       "docker": {"image": "jb-test:gpu", "gpu_passthrough": "cdi",
                                                  "cdi_spec_dirs": [str(spec_dir)]}})
    api = FakeDockerApi(FakeEngine(version=version))
    with api:
        monkeypatch.setenv("DOCKER_HOST", api.docker_host)
        try:
            res = run_study(write_study(study), out=tmp_path / "out", quiet=True, report=False)
        except JoulebenchError as exc:
            res = exc
    return res, api


def test_podman_study_creates_its_container_through_libpod_with_exactly_gpu_1(two_gpus, write_study, tmp_path,
                                                                             monkeypatch):
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.yaml").write_text(BOTH_YAML)
    res, api = _cdi_study(write_study, tmp_path, monkeypatch, PODMAN_VERSION, spec_dir)
    assert api.created and all(c.api == "libpod" for c in api.created)
    assert not any(call.endswith("/containers/create") and "libpod" not in call for call in api.engine.calls)
    for c in api.created:
        assert c.body["devices"] == [{"path": f"nvidia.com/gpu={UUIDS[1]}"}]   # GPU 1 only, by UUID, never all
        assert c.body["env"]["JOULEBENCH_GPU_PASSTHROUGH"] == "cdi"
        assert c.body["env"]["JOULEBENCH_CONTAINER_ENGINE"] == "Podman 4.3.1"
        assert c.body["netns"] == {"nsmode": "none"} and c.body["read_only_filesystem"] is True
        assert c.experiment_spec["worker_device"] == "cuda:0"
    assert not isinstance(res, Exception) and res.exit_code != 0   # the fake container "ran" and failed


def test_docker_study_with_cdi_is_refused_before_any_container(two_gpus, write_study, tmp_path, monkeypatch):
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.yaml").write_text(BOTH_YAML)
    res, api = _cdi_study(write_study, tmp_path, monkeypatch, DOCKER_VERSION, spec_dir)
    assert not api.created
    assert isinstance(res, JoulebenchError), res
    assert "needs Podman" in str(res) and "device-request" in str(res)


def test_podman_study_without_a_cdi_device_fails_each_experiment_naming_the_fix(two_gpus, write_study, tmp_path,
                                                                              monkeypatch):
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    (spec_dir / "nvidia.json").write_text(json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
                                                      "devices": [{"name": "0", "containerEdits": {}}]}))
    res, api = _cdi_study(write_study, tmp_path, monkeypatch, PODMAN_VERSION, spec_dir)
    assert not api.created and res.exit_code != 0
    recs = list(StudyStore(tmp_path / "out").records_by_id().values())
    assert recs and all(r["status"] == "failed" for r in recs)
    for r in recs:
        assert f"GPU {UUIDS[1]} has no nvidia.com/gpu device" in r["error"] and "nvidia-ctk cdi generate" in r["error"]


def test_doctor_refuses_cdi_on_docker_with_the_fix(two_gpus):
    from joulebench.cli.doctor import _container_gpu_check

    with FakeDockerApi(FakeEngine(version=DOCKER_VERSION)) as api:
        import docker

        client = docker.DockerClient(base_url=api.docker_host.replace("tcp://", "http://"))
        try:
            check, probe = _container_gpu_check(client, "img", [{"uuid": UUIDS[1]}], gpu_passthrough="cdi")
        finally:
            client.close()
    assert check.ok is False and "needs Podman" in check.detail and "device-request" in check.fix
    assert probe == {} and not api.created


# --------------------------------------------------------------------------- the real Podman service

PODMAN_CDI_DIR = Path("/var/run/cdi")   # Podman 4.3 reads /etc/cdi and /var/run/cdi only


@pytest.fixture
def stand_in_cdi_device(tmp_path):
    """A CDI spec in Podman's own spec folder naming a fake GPU: ``/dev/null`` as ``/dev/nvidia-fake0``, an
    environment variable and a read-only file mount. Uniquely named, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("writing a CDI spec into /var/run/cdi needs root")
    fake = f"GPU-jbtest-{uuid.uuid4()}"
    marker = tmp_path / "cdi-marker"
    marker.write_text(fake + "\n")
    created_dir = not PODMAN_CDI_DIR.exists()
    PODMAN_CDI_DIR.mkdir(parents=True, exist_ok=True)
    path = PODMAN_CDI_DIR / f"joulebench-test-{os.getpid()}-{fake[-12:]}.json"
    path.write_text(json.dumps({
        "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
        "devices": [{"name": fake, "containerEdits": {
            "deviceNodes": [{"path": "/dev/nvidia-fake0", "hostPath": "/dev/null"}],
            "env": [f"JB_CDI_STAND_IN={fake}"],
            "mounts": [{"hostPath": str(marker), "containerPath": "/jb-cdi-marker", "options": ["ro", "bind"]}]}}]}))
    try:
        yield fake, path
    finally:
        path.unlink(missing_ok=True)
        if created_dir:
            try:
                PODMAN_CDI_DIR.rmdir()
            except OSError:
                pass


@pytest.mark.containers
def test_real_podman_gives_the_stand_in_cdi_device_with_the_runners_isolation(stand_in_cdi_device, tmp_path,
                                                                              monkeypatch):
    from joulebench.runners.docker.client import Containers
    from joulebench.runners.docker.gpu import engine_info
    from joulebench.runners.docker.request import ContainerSettings, container_kwargs

    fake, spec_path = stand_in_cdi_device
    client = _podman_client(monkeypatch)
    exp, staging = _experiment(tmp_path, device="cuda:0")
    pt = Passthrough("cdi", engine_info(client), table=[], cdi_spec_dirs=[str(spec_path.parent)])
    kw = container_kwargs(exp, image=BASE_IMAGE, staging=staging, gpus=[fake], settings=ContainerSettings(
        mem_limit="256m", pids_limit=64, shm_size="64m", large_shm_size="64m", user="4321:4321"),
        passthrough=pt, mount_hf_cache=False)
    assert kw[CDI_DEVICES] == [f"nvidia.com/gpu={fake}"]
    kw["name"] = f"jb-cdi-{os.getpid()}"
    kw["command"] = ["sh", "-c", 'stat -c "%n %F %t %T" /dev/nvidia-fake0; echo "ENV=$JB_CDI_STAND_IN"; '
                                 'echo "MARK=$(cat /jb-cdi-marker)"; echo "ID=$(id -u):$(id -g)"; '
                                 'touch /rootfs-write 2>/dev/null && echo ROOT=rw || echo ROOT=ro; '
                                 'touch /tmp/ok && echo TMP=rw; echo "NET=$(ls /sys/class/net | tr "\\n" " ")"; '
                                 'test -r /jb/experiment.json && echo SPEC=ok']
    containers = Containers(lambda: client, stop_timeout_s=5)
    try:
        c = containers.create(kw)          # the runner's own create: libpod for cdi_devices
        assert type(c).__name__ == "Container" and c.name == kw["name"]
        c.start()
        assert c.wait(timeout=60)["StatusCode"] == 0, c.logs().decode()
        out = c.logs().decode()
        attrs = client.api.inspect_container(c.id)
    finally:
        containers.close()
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("/"))
    assert "/dev/nvidia-fake0 character special file 1 3" in out, out     # /dev/null's 1:3 under the GPU's name
    assert lines["ENV"] == fake and lines["MARK"] == fake and lines["ID"] == "4321:4321", out
    assert lines["ROOT"] == "ro" and lines["TMP"] == "rw" and lines["SPEC"] == "ok", out
    assert lines["NET"].split() == ["lo"], out                            # network none: loopback only
    hc, cfg = attrs["HostConfig"], attrs["Config"]
    assert hc["ReadonlyRootfs"] is True and hc["NetworkMode"] == "none" and hc["Init"] is True
    assert hc["Memory"] == 256 * 2 ** 20 and hc["PidsLimit"] == 64 and hc["ShmSize"] == 64 * 2 ** 20
    assert "no-new-privileges" in " ".join(hc.get("SecurityOpt") or [])
    assert cfg["User"] == "4321:4321" and cfg["Labels"]["joulebench.experiment"] == "e1"
    assert cfg["Labels"]["joulebench.runner"] == "docker"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["JOULEBENCH_GPU_PASSTHROUGH"] == "cdi" and env["JOULEBENCH_ASSIGNED_GPUS"] == fake
    with pytest.raises(Exception):                                        # removed by close()
        client.containers.get(kw["name"])
    client.close()


@pytest.mark.containers
def test_real_cdi_study_without_a_gpu_behind_the_stand_in_fails_with_gpu_unavailable(stand_in_cdi_device, two_gpus,
                                                                                    write_study, tmp_path,
                                                                                    monkeypatch):
    """A whole tiny study with gpu_passthrough cdi: the dispatcher names GPU 1 (fake NVML) by the stand-in's
    CDI name, Podman gives the container the stand-in device, and the worker, which sees no GPU, fails its
    trial with gpu-unavailable and the cdi advice instead of measuring the CPU."""
    fake, spec_path = stand_in_cdi_device
    client = _podman_client(monkeypatch)
    client.close()
    # the stand-in spec names the fake UUID: give the dispatcher's fake NVML that UUID for GPU 1
    data = json.loads(two_gpus.read_text())
    data["gpus"][1]["uuid"] = fake
    two_gpus.write_text(json.dumps(data))
    study = tiny_study("cdi-loud", device="cuda:1", runner="docker",
                       runner_options={"reuse_workers": False, "docker": _host_python_options(
                           gpu_passthrough="cdi", cdi_spec_dirs=[str(spec_path.parent)])})
    res = run_study(write_study(study), out=tmp_path / "out", quiet=True, report=False)
    recs = list(StudyStore(tmp_path / "out").records_by_id().values())
    assert res.exit_code != 0 and recs
    for r in recs:
        assert r["status"] == "failed" and r["error_kind"] == "gpu-unavailable", r.get("error")
        assert fake in r["error"] and "CDI spec" in r["error"] and "nvidia-ctk cdi generate" in r["error"]
        assert r["environment"]["runner"]["gpu_passthrough"] == "cdi"
        assert r["environment"]["runner"]["container_engine"].startswith("Podman")
        assert r.get("energy_j") is None


def _engine_view(client, cid: str) -> dict:
    """What the engine made of a create request: the inspect fields the runner's arguments set."""
    a = client.api.inspect_container(cid)
    hc, cfg = a["HostConfig"], a["Config"]
    mounts = sorted((m["Destination"], m.get("Source"), m.get("RW"), m.get("Type")) for m in a.get("Mounts") or [])
    keys_hc = ("ReadonlyRootfs", "NetworkMode", "CapDrop", "SecurityOpt", "Init", "Memory", "PidsLimit", "ShmSize",
               "Tmpfs", "IpcMode", "Privileged", "Ulimits", "Devices")
    return {"Config": {k: cfg.get(k) for k in ("User", "Labels", "WorkingDir", "Cmd", "StopSignal", "Image")},
            "Env": sorted(cfg.get("Env") or []), "HostConfig": {k: hc.get(k) for k in keys_hc}, "Mounts": mounts}


@pytest.mark.containers
def test_real_podman_makes_the_same_container_from_both_apis(tmp_path, monkeypatch):
    """Without GPUs, the runner's arguments sent through Podman's Docker API and through its libpod API
    (libpod.py's translation) give containers the engine describes alike: nothing lost in translation."""
    from joulebench.runners.docker import libpod
    from joulebench.runners.docker.request import ContainerSettings, container_kwargs

    client = _podman_client(monkeypatch)
    exp, staging = _experiment(tmp_path, device="cpu")
    settings = ContainerSettings(mem_limit="300m", pids_limit=77, env={"EXTRA": "1"}, user="4321:4321",
                                 extra_mounts=[(str(tmp_path), "/data", True)], ipc_mode="private")
    kw = container_kwargs(exp, image=BASE_IMAGE, staging=staging, gpus=[], settings=settings,
                          passthrough=Passthrough("device-nodes", PODMAN), mount_hf_cache=False)
    views, ids = [], []
    try:
        for api in ("docker", "libpod"):
            kw["name"] = f"jb-cdi-{api}-{os.getpid()}"
            c = client.containers.create(**kw) if api == "docker" else libpod.create(client, kw)
            ids.append(c.id)
            views.append(_engine_view(client, c.id))
    finally:
        for cid in ids:
            client.api.remove_container(cid, force=True)
        client.close()
    docker_view, libpod_view = views
    diffs = [(part, k, docker_view[part][k], libpod_view[part][k]) for part in ("Config", "HostConfig")
             for k in docker_view[part] if docker_view[part][k] != libpod_view[part][k]]
    assert not diffs, diffs                       # (part, key, Docker API's, libpod API's)
    assert libpod_view == docker_view
    assert set(docker_view["HostConfig"]["Tmpfs"]) == {"/tmp", "/var/tmp", "/run"}   # the read-only root's tmpfs


@pytest.mark.containers
def test_real_doctor_probe_through_cdi_names_the_cdi_fix(stand_in_cdi_device, two_gpus, monkeypatch):
    """``joulebench doctor --gpu-passthrough cdi`` on Podman: the probe container is created through libpod
    with the stand-in device; NVML inside sees no GPU, so the check fails and names the CDI spec."""
    from joulebench.cli import doctor
    from joulebench.testing import install_from_environment

    fake, spec_path = stand_in_cdi_device
    data = json.loads(two_gpus.read_text())
    data["gpus"] = data["gpus"][1:]
    data["gpus"][0]["uuid"] = fake
    two_gpus.write_text(json.dumps(data))
    install_from_environment()
    client = _podman_client(monkeypatch)
    try:
        checks = {c.name: c for c in doctor.run_checks(client=client, probe_image=BASE_IMAGE, python="python3",
                                                       gpu_passthrough="cdi",
                                                       cdi_spec_dirs=[str(spec_path.parent)])}
    finally:
        client.close()
    probe = checks["GPU inside a container"]
    assert "(exit 0)" in probe.detail and "refused" not in probe.detail   # the probe container did run
    assert probe.ok is False and "gpu_passthrough cdi" in probe.detail and "saw 0 of 1 GPU(s)" in probe.detail
    assert "CDI spec" in probe.fix and "nvidia-ctk cdi generate" in probe.fix
