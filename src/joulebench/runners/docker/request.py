"""What the runner asks the container engine for: the ``containers.create`` arguments of an experiment.

Every container starts unprivileged: network ``none`` (loopback only), all capabilities dropped,
``no-new-privileges``, an init process (so SIGTERM stops the worker), a read-only root file system
with a tmpfs ``/tmp``, memory and pid limits, labels naming the study, the experiment and the
dispatcher. GPUs go in as the engine takes them (gpu.py): one NVIDIA device request for exactly the
experiment's GPUs on Docker, their device nodes and the driver folder on Podman, or (``cdi``, Podman only)
their CDI names, for which the container is created through Podman's libpod API (libpod.py translates
these arguments). Inside, the engine numbers the passed GPUs from 0, so the
spec the container reads carries ``worker_device`` (e.g. ``cuda:0`` for the host's ``cuda:1``), while
the trials' parameters, which the records keep, still name the host's device.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from joulebench.config.device import DeviceSpec
from joulebench.spec import ExperimentSpec
from joulebench.runners.base import Experiment
from joulebench.runners.docker.gpu import ENV_PASSTHROUGH, Passthrough
from joulebench.runners.docker.mounts import (CONTAINER_EXPERIMENT, CONTAINER_HF_CACHE, CONTAINER_OUT,
                                              CONTAINER_TOKEN, hf_hub_cache, local_paths, slug, study_dir_key)

LABEL_STUDY = "joulebench.study"
LABEL_EXPERIMENT = "joulebench.experiment"
LABEL_STUDY_DIR = "joulebench.study-dir"
LABEL_HOST = "joulebench.dispatcher-host"
LABEL_PID = "joulebench.dispatcher-pid"
LABEL_RUNNER = "joulebench.runner"

IMAGE_UID = 10001           # the unprivileged user of the engine images
# Engines that exchange tensors through shared memory (NCCL, worker processes) need a large /dev/shm.
LARGE_SHM_ENGINES = frozenset({"vllm", "sglang", "trtllm"})
WORKER_COMMAND = ["python", "-m", "joulebench.worker.main", CONTAINER_EXPERIMENT, "--out", CONTAINER_OUT]


def worker_command(python: str = "python") -> list[str]:
    """The worker's command line with the image's interpreter (``runner_options.docker.python``)."""
    return [python or "python"] + WORKER_COMMAND[1:]


@dataclass
class ContainerSettings:
    """Resource and isolation settings of every experiment container."""

    mem_limit: str | None = "16g"
    pids_limit: int = 4096
    shm_size: str = "1g"              # large-shm engines get ``large_shm_size``
    large_shm_size: str = "16g"
    ipc_mode: str | None = None       # e.g. "host" for multi-GPU NCCL setups that need it
    read_only_root: bool = True
    tmpfs_size: str = "4g"
    stop_timeout_s: float = 10.0      # SIGTERM, then SIGKILL after this
    env: dict[str, str] = field(default_factory=dict)   # extra environment (no secrets: visible in inspect)
    extra_mounts: list[tuple[str, str, bool]] = field(default_factory=list)   # (host, container, read_only)
    user: str | None = None           # default: the host user, or the image's unprivileged user as root


def backend_of(spec: ExperimentSpec) -> str:
    """The engine an experiment spec needs (its backend), ``transformers`` if it names none."""
    return spec.backend or "transformers"


# --------------------------------------------------------------------------- GPUs

def gpu_device_request(gpus: Iterable[str | int]):
    """The SDK device request for exactly these GPUs (NVML UUIDs or indices)."""
    import docker

    ids = [str(g) for g in gpus]
    return docker.types.DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])


def worker_device(device: str, n_gpus: int) -> str | None:
    """The device string as the worker in the container sees it, or None to keep the spec's own.

    The container holds only its ``n_gpus`` passed GPUs, numbered from 0: ``cuda:1`` on the host is
    ``cuda:0`` inside, ``cuda:2,5`` is ``cuda:0,1`` (``DeviceSpec.renumbered``). ``auto`` and ``cuda``
    become ``cuda:0``, so a container that should hold a GPU fails loudly when it has none instead of
    running on the CPU.
    """
    spec = DeviceSpec.parse(device)
    if n_gpus <= 0 or spec.is_cpu:
        return None
    return str(spec.resolved(cuda_available=True).renumbered())


def container_spec(spec: ExperimentSpec, gpus: list[str]) -> ExperimentSpec:
    """The experiment spec as the container gets it: ``worker_device`` set for its GPUs."""
    device = worker_device(str(DeviceSpec.of(spec.first_params)), len(gpus))
    return spec if device is None else spec.model_copy(update={"worker_device": device})


# --------------------------------------------------------------------------- isolation

def gpu_ulimits_kwargs() -> list:
    """NVIDIA's recommended limits for PyTorch in containers (pinned memory, deep stacks)."""
    import docker

    return [docker.types.Ulimit(name="memlock", soft=-1, hard=-1),
            docker.types.Ulimit(name="stack", soft=67108864, hard=67108864)]


def isolation_kwargs(*, gpus: list[str] | None = None, settings: ContainerSettings | None = None,
                     engine: str | None = None, gpu_ulimits: bool = True,
                     passthrough: Passthrough | None = None) -> dict[str, Any]:
    """The isolation every joulebench container gets (experiments and probes alike). GPUs go in by
    ``passthrough`` (default: an NVIDIA device request); its mounts come back under ``mounts``
    (docker SDK Mounts) and its environment under ``environment``."""
    s = settings or ContainerSettings()
    kw: dict[str, Any] = dict(
        network_mode="none",            # loopback only: engine servers listen on 127.0.0.1 inside
        privileged=False,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=True,                      # PID 1 forwards SIGTERM; Python as PID 1 would ignore it
        read_only=s.read_only_root,
        tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={s.tmpfs_size},mode=1777"},
        pids_limit=s.pids_limit,
        shm_size=s.large_shm_size if engine in LARGE_SHM_ENGINES else s.shm_size,
    )
    if s.mem_limit:
        kw["mem_limit"] = s.mem_limit
    if s.ipc_mode:
        kw["ipc_mode"] = s.ipc_mode
    if gpus:
        from docker.types import Mount

        gkw, gmounts, genv = (passthrough or Passthrough()).apply([str(g) for g in gpus])
        kw.update(gkw)
        if gmounts:
            kw["mounts"] = [Mount(target=t, source=src, type="bind", read_only=ro) for src, t, ro in gmounts]
        if genv:
            kw["environment"] = genv
    pt = passthrough or Passthrough()
    if gpus and gpu_ulimits and not (pt.engine and pt.engine.is_podman):
        # Podman (rootful without CAP_SYS_RESOURCE, or rootless) refuses to raise limits above its own:
        # its containers keep the engine's limits.
        kw["ulimits"] = gpu_ulimits_kwargs()
    return kw


# --------------------------------------------------------------------------- one experiment

def labels_for(experiment: Experiment) -> dict[str, str]:
    return {
        LABEL_STUDY: experiment.study_name,
        LABEL_EXPERIMENT: experiment.experiment_id,
        LABEL_STUDY_DIR: study_dir_key(experiment.study_dir),
        LABEL_HOST: socket.gethostname(),
        LABEL_PID: str(os.getpid()),
        LABEL_RUNNER: "docker",
    }


def container_name(experiment: Experiment) -> str:
    return (f"joulebench-{slug(experiment.study_name, 30)}-{study_dir_key(experiment.study_dir)[:8]}-"
            f"{slug(experiment.experiment_id, 24)}")


def container_user(settings: ContainerSettings) -> str:
    """The host user, or the image's unprivileged user when the dispatcher is root."""
    if settings.user is not None:
        return settings.user
    uid = os.getuid()
    return f"{uid}:{os.getgid()}" if uid != 0 else f"{IMAGE_UID}:{IMAGE_UID}"


def _mounts_and_env(experiment: Experiment, staging: Path, settings: ContainerSettings, *,
                    mount_hf_cache: bool, token_file: Path | None) -> tuple[list, dict[str, str]]:
    from docker.types import Mount

    mounts = [
        Mount(target=CONTAINER_EXPERIMENT, source=str(staging / "experiment.json"), type="bind", read_only=True),
        Mount(target=CONTAINER_OUT, source=str(staging / "out"), type="bind", read_only=False),
    ]
    env = {
        "PYTHONUNBUFFERED": "1", "HOME": "/tmp/home", "XDG_CACHE_HOME": "/tmp/cache", "HF_HOME": "/tmp/hf-home",
        "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
        "VLLM_NO_USAGE_STATS": "1", "JOULEBENCH_IN_CONTAINER": "1",
    }
    if mount_hf_cache and (cache := hf_hub_cache()) is not None:
        mounts.append(Mount(target=CONTAINER_HF_CACHE, source=str(cache), type="bind", read_only=True))
        env["HF_HUB_CACHE"] = CONTAINER_HF_CACHE
    for p in local_paths(experiment.spec):
        mounts.append(Mount(target=str(p), source=str(p), type="bind", read_only=True))
    for host, target, ro in settings.extra_mounts:
        mounts.append(Mount(target=target, source=str(host), type="bind", read_only=ro))
    if token_file is not None:
        mounts.append(Mount(target=CONTAINER_TOKEN, source=str(token_file), type="bind", read_only=True))
        env["HF_TOKEN_PATH"] = CONTAINER_TOKEN
    env.update(settings.env)
    return mounts, env


def container_kwargs(experiment: Experiment, *, image: str, staging: Path, gpus: list[str],
                     settings: ContainerSettings, command: list[str] | None = None,
                     mount_hf_cache: bool = True, token_file: Path | None = None,
                     passthrough: Passthrough | None = None, python: str = "python",
                     extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything sent to ``containers.create`` for one experiment (pure apart from path checks and the
    driver folder of the ``device-nodes`` passthrough). ``extra_env``: the runner's facts for the records
    (engine, image)."""
    gpus = [str(g) for g in gpus]
    mounts, env = _mounts_and_env(experiment, staging, settings, mount_hf_cache=mount_hf_cache,
                                  token_file=token_file)
    passthrough = passthrough or Passthrough()
    iso = isolation_kwargs(gpus=gpus, settings=settings, engine=backend_of(experiment.spec), passthrough=passthrough)
    mounts += iso.pop("mounts", [])
    gpu_env = iso.pop("environment", {})
    if gpus:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["JOULEBENCH_ASSIGNED_GPUS"] = ",".join(gpus)
        env[ENV_PASSTHROUGH] = passthrough.method
        for k, v in gpu_env.items():   # the driver's library folder first, the user's own after it
            env[k] = f"{v}:{env[k]}" if k == "LD_LIBRARY_PATH" and env.get(k) else v
    env.update(extra_env or {})
    return dict(
        image=image,
        command=list(command) if command else worker_command(python),
        name=container_name(experiment),
        labels=labels_for(experiment),
        mounts=mounts,
        environment=env,
        working_dir="/tmp",
        stop_signal="SIGTERM",
        detach=True,
        user=container_user(settings),
        **iso,
    )
