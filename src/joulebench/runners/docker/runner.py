"""The container runner: each experiment in a short-lived container of its engine's image.

The worker is the same as the process runner's (``python -m joulebench.worker.main
EXPERIMENT.json --out OUTDIR``). For each experiment the dispatcher

1. writes the experiment JSON into a private staging folder of the study directory
   (``<study>/.staging/<experiment>/``) and mounts it read-only at ``/jb/experiment.json``;
   the folder's ``out/`` is mounted read-write at ``/jb/out`` (OUTDIR);
2. mounts the Hugging Face hub cache and any local model files/folders the experiment names
   read-only (at the same paths, so the experiment JSON needs no rewriting); a Hugging Face token,
   if the host has one, goes in as a read-only file (``HF_TOKEN_PATH``), never as an environment
   variable (those show in ``docker inspect``) and never into records or logs;
3. starts the container unprivileged: network ``none`` (loopback only), all capabilities dropped,
   ``no-new-privileges``, an init process (so SIGTERM stops the worker), a read-only root file
   system with a tmpfs ``/tmp``, memory and pid limits, labels naming the study, the experiment
   and the dispatcher; GPUs through a device request for exactly the assigned GPUs;
4. reads the worker's events from the container's log stream, enforces the timeout, and stops the
   container on Ctrl-C;
5. merges ``out/trials/*.json`` and ``out/timeseries/*.parquet`` into the study directory with
   atomic writes, keeps the log under ``<study>/logs/`` on failure, and always removes the container
   and the staging folder.

Containers left by a dispatcher that died (SIGKILL, power loss) carry its host and pid in their
labels; ``prepare()`` removes those of the study whose dispatcher is gone.

Transient engine API errors (connection drops, 5xx) are retried a bounded number of times with
tenacity; permanent ones (no such image, invalid request) fail the experiment with the engine's
message.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from joulebench.system.proc import pid_alive
from joulebench.results.store import atomic_copy, atomic_write_bytes, atomic_write_json
from joulebench.runners.base import EventCallback, Experiment, ExperimentOutcome, ReusingRunner, parse_event

log = logging.getLogger(__name__)

LABEL_STUDY = "joulebench.study"
LABEL_EXPERIMENT = "joulebench.experiment"
LABEL_STUDY_DIR = "joulebench.study-dir"
LABEL_HOST = "joulebench.dispatcher-host"
LABEL_PID = "joulebench.dispatcher-pid"
LABEL_RUNNER = "joulebench.runner"

CONTAINER_EXPERIMENT = "/jb/experiment.json"
CONTAINER_OUT = "/jb/out"
CONTAINER_HF_CACHE = "/jb/hf-hub"
CONTAINER_TOKEN = "/run/secrets/hf_token"
IMAGE_UID = 10001           # the unprivileged user of the engine images

# Spec keys whose string values may name local files or folders to mount read-only.
PATH_KEYS = frozenset({"model", "model_path", "tokenizer", "tokenizer_path", "dataset_path",
                       "draft_model", "lora_path", "adapter_path", "gguf", "local_dir"})

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Engines that exchange tensors through shared memory (NCCL, worker processes) need a large /dev/shm.
LARGE_SHM_ENGINES = frozenset({"vllm", "sglang", "trtllm"})


# --------------------------------------------------------------------------- engine connection

def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def connect(timeout_s: float = 600):
    """A docker SDK client for ``DOCKER_HOST`` (Docker, or Podman's Docker-compatible socket)."""
    import docker

    try:
        return docker.from_env(timeout=int(timeout_s))
    except docker.errors.DockerException as exc:
        from joulebench.errors import JoulebenchError

        raise JoulebenchError(
            f"no container engine answers at {docker_host()}: {exc}\n"
            "  hint: start Docker, or serve Podman's API (`podman system service --time=0 unix://PATH`) "
            "and set DOCKER_HOST=unix://PATH; scripts/podman-setup.sh does both") from None


def engine_available(timeout_s: float = 1.0) -> bool:
    """True when a Docker-API engine answers a ping at DOCKER_HOST or the default socket (fast)."""
    host = docker_host()
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not os.path.exists(path):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        try:
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            data = s.recv(256)
            return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] + b" "
        except OSError:
            return False
        finally:
            s.close()
    try:   # tcp:// or ssh:// hosts: let the SDK handle TLS settings
        import docker

        client = docker.from_env(timeout=max(1, int(timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


# --------------------------------------------------------------------------- retries

def _is_transient(exc: BaseException) -> bool:
    import docker
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(exc, docker.errors.NotFound):
        return False
    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code or 0
        text = str(exc).lower()
        permanent = ("no such", "not found", "oci ", "permission denied", "invalid", "conflict", "unknown")
        return code in (500, 502, 503, 504) and not any(p in text for p in permanent)
    return False


def retrying(attempts: int = 4, max_wait_s: float = 2.0):
    """The tenacity policy for engine API calls: transient errors only, bounded, logged."""
    import tenacity

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=max_wait_s),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def _call(fn: Callable, *args, attempts: int = 4, **kwargs):
    return retrying(attempts)(fn, *args, **kwargs)


# --------------------------------------------------------------------------- helpers

def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:n] or "x"


def _study_dir_key(study_dir: Path) -> str:
    import hashlib

    return hashlib.sha256(str(Path(study_dir).resolve()).encode()).hexdigest()[:16]


def backend_of(spec: dict[str, Any]) -> str:
    """The engine an experiment spec needs (its backend), ``transformers`` if it names none."""
    for holder in (spec, spec.get("params") or {}, spec.get("load_params") or {}):
        if isinstance(holder, dict) and isinstance(holder.get("backend"), str):
            return holder["backend"]
    for t in spec.get("trials") or []:
        if isinstance(t, dict):
            p = t.get("params") or t
            if isinstance(p, dict) and isinstance(p.get("backend"), str):
                return p["backend"]
    return "transformers"


def local_paths(spec: Any, *, keys: frozenset[str] = PATH_KEYS) -> list[Path]:
    """Host files or folders named under PATH_KEYS anywhere in the spec (relative ones against the
    spec's ``base_dir``, as the worker resolves them), existing ones only, as absolute paths."""
    found: list[Path] = []
    base_dir = spec.get("base_dir") if isinstance(spec, dict) else None

    def walk(obj: Any, key: str | None) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, str(k))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, str) and key in keys:
            p = Path(obj.split(":", 1)[1] if obj.startswith("file:") else obj).expanduser()
            if not p.is_absolute() and base_dir:
                p = Path(base_dir) / p
            if p.is_absolute() and p.exists() and p != Path("/"):
                found.append(Path(os.path.abspath(p)))   # the path the worker will open

    walk(spec, None)
    out: list[Path] = []
    for p in sorted(set(found)):
        if not any(q in p.parents for q in found if q != p):   # a parent folder already covers it
            out.append(p)
    return out


def hf_hub_cache() -> Path | None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            p = Path(os.environ[var]).expanduser()
            return p if p.is_dir() else None
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    p = home / "hub"
    return p if p.is_dir() else None


def hf_token() -> str | None:
    """The host's Hugging Face token (HF_TOKEN, else the token file), never logged."""
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok.strip() or None
    path = Path(os.environ.get("HF_TOKEN_PATH") or
                Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def gpu_device_request(gpus: Iterable[str | int]):
    """The SDK device request for exactly these GPUs (NVML UUIDs or indices)."""
    import docker

    ids = [str(g) for g in gpus]
    return docker.types.DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])


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


def isolation_kwargs(*, gpus: list[str] | None = None, settings: ContainerSettings | None = None,
                     engine: str | None = None, gpu_ulimits: bool = True) -> dict[str, Any]:
    """The isolation every joulebench container gets (experiments and probes alike)."""
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
        kw["device_requests"] = [gpu_device_request(gpus)]
    if gpus and gpu_ulimits:
        import docker

        # NVIDIA's recommended limits for PyTorch in containers (pinned memory, deep stacks).
        kw["ulimits"] = [docker.types.Ulimit(name="memlock", soft=-1, hard=-1),
                         docker.types.Ulimit(name="stack", soft=67108864, hard=67108864)]
    return kw


def run_probe(client, image: str, command: list[str], *, gpus: list[str] | None = None,
              timeout_s: float = 120, labels: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run a short command in ``image`` with the runner's isolation; (exit code or None on timeout, output).
    The container is always removed."""
    import docker

    c = _call(client.containers.create, image=image, command=command, detach=True,
              labels={LABEL_RUNNER: "probe", **(labels or {})}, environment={"HOME": "/tmp"},
              **isolation_kwargs(gpus=gpus, gpu_ulimits=False))
    try:
        _call(c.start)
        try:
            code = int(c.wait(timeout=timeout_s).get("StatusCode", -1))
        except Exception:   # requests' ReadTimeout: the probe hung
            code = None
        out = c.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return code, out
    finally:
        try:
            _call(c.remove, force=True)
        except docker.errors.NotFound:
            pass


# --------------------------------------------------------------------------- the runner

class DockerRunner(ReusingRunner):
    name = "docker"

    def __init__(self, client=None, images: dict[str, str] | None = None, gpus: list[str] | None = None,
                 timeout_s: float | None = None, *, image: str | None = None, settings: ContainerSettings | None = None,
                 build_missing: bool = True, command: list[str] | None = None,
                 mount_hf_cache: bool = True, pass_hf_token: bool = True, poll_s: float = 0.1,
                 progress: Callable[[str, str], None] | None = None):
        """``images``: engine -> image reference (default: each engine's current content-hash image,
        built when missing if ``build_missing``). ``gpus``: override every experiment's GPU list.
        ``timeout_s``: default per-experiment timeout. ``command``: replaces the worker command
        (diagnostics, tests). ``image``: one image for every experiment (a study's
        ``runner_options.image``)."""
        self._client = client
        self.image = image
        self.images = dict(images or {})
        self.gpus = gpus
        self.timeout_s = timeout_s
        self.settings = settings or ContainerSettings()
        self.build_missing = build_missing
        self.command = command
        self.mount_hf_cache = mount_hf_cache
        self.pass_hf_token = pass_hf_token
        self.poll_s = poll_s
        self.progress = progress
        self._live: dict[str, Any] = {}     # container id -> container, removed in close()
        self._worker: _Live | None = None   # the container kept to serve its load group's next experiment
        self.idle_timeout_s = 1800.0        # a serving container idle this long ends itself
        self.heartbeat_timeout_s = 60.0     # ... and sooner when this dispatcher stops beating (crash, kill -9)
        self._image_errors: dict[str, Exception] = {}
        self._lock = threading.Lock()

    # -- engine
    @property
    def client(self):
        if self._client is None:
            self._client = connect()
        return self._client

    def image_for(self, experiment: Experiment) -> str:
        if experiment.image or self.image:
            return experiment.image or self.image
        engine = backend_of(experiment.spec)
        if engine in self.images:
            return self.images[engine]
        env_ref = os.environ.get(f"JOULEBENCH_IMAGE_{engine.upper()}")
        if env_ref:   # e.g. compose's joulebench-transformers:latest
            self.images[engine] = env_ref
            return env_ref
        if engine in self._image_errors:   # a failed build is not retried for every experiment
            raise self._image_errors[engine]
        from joulebench import images as images_mod

        try:
            info = images_mod.image_status([engine], client=self.client)[0]
            if not info.current:
                if not self.build_missing:
                    return images_mod.image_for(engine, client=self.client)   # raises with the hint
                log.warning("building the %s image %s (missing or stale)", engine, info.ref)
                info = images_mod.build_images([engine], client=self.client, progress=self.progress)[0]
        except images_mod.ImageError as exc:
            self._image_errors[engine] = exc
            raise
        self.images[engine] = info.ref
        return info.ref

    # -- lifecycle
    def labels_for(self, experiment: Experiment) -> dict[str, str]:
        return {
            LABEL_STUDY: experiment.study_name,
            LABEL_EXPERIMENT: experiment.experiment_id,
            LABEL_STUDY_DIR: _study_dir_key(experiment.study_dir),
            LABEL_HOST: socket.gethostname(),
            LABEL_PID: str(os.getpid()),
            LABEL_RUNNER: "docker",
        }

    def prepare(self, study_dir: Path, study_name: str) -> None:
        self.sweep(study_name)
        staging = Path(study_dir) / ".staging"
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)

    def sweep(self, study_name: str) -> list[str]:
        """Remove this study's containers whose dispatcher is gone (or is this process); returns names."""
        containers = _call(self.client.containers.list, all=True,
                           filters={"label": f"{LABEL_STUDY}={study_name}"})
        removed = []
        for c in containers:
            labels = c.labels or {}
            if not _orphaned(c):
                continue
            log.warning("removing leftover container %s of study %s (experiment %s)",
                        c.name, study_name, labels.get(LABEL_EXPERIMENT))
            self._remove(c)
            removed.append(c.name)
        return removed

    def close(self) -> None:
        try:
            self._retire()
        except Exception as exc:   # never mask the study's own outcome
            log.error("could not retire the serving container: %s", exc)
        for c in list(self._live.values()):
            self._remove(c)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass

    def _remove(self, container) -> None:
        import docker

        try:
            _call(container.remove, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:   # never mask the experiment's own error with a clean-up error
            log.error("could not remove container %s: %s", getattr(container, "name", container), exc)
        with self._lock:
            self._live.pop(getattr(container, "id", None), None)

    # -- container arguments
    def container_kwargs(self, experiment: Experiment, *, image: str, staging: Path,
                         token_file: Path | None = None) -> dict[str, Any]:
        """Everything sent to ``containers.create`` for one experiment (pure apart from path checks)."""
        from docker.types import Mount

        s = self.settings
        engine = backend_of(experiment.spec)
        gpus = [str(g) for g in (self.gpus if self.gpus is not None else experiment.gpus)]
        mounts = [
            Mount(target=CONTAINER_EXPERIMENT, source=str(staging / "experiment.json"), type="bind", read_only=True),
            Mount(target=CONTAINER_OUT, source=str(staging / "out"), type="bind", read_only=False),
        ]
        env = {
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp/home",
            "XDG_CACHE_HOME": "/tmp/cache",
            "HF_HOME": "/tmp/hf-home",
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_NO_USAGE_STATS": "1",
            "JOULEBENCH_IN_CONTAINER": "1",
        }
        if self.mount_hf_cache and (cache := hf_hub_cache()) is not None:
            mounts.append(Mount(target=CONTAINER_HF_CACHE, source=str(cache), type="bind", read_only=True))
            env["HF_HUB_CACHE"] = CONTAINER_HF_CACHE
        for p in local_paths(experiment.spec):
            mounts.append(Mount(target=str(p), source=str(p), type="bind", read_only=True))
        for host, target, ro in s.extra_mounts:
            mounts.append(Mount(target=target, source=str(host), type="bind", read_only=ro))
        if token_file is not None:
            mounts.append(Mount(target=CONTAINER_TOKEN, source=str(token_file), type="bind", read_only=True))
            env["HF_TOKEN_PATH"] = CONTAINER_TOKEN
        env.update(s.env)

        kwargs: dict[str, Any] = dict(
            image=image,
            command=list(self.command) if self.command else
            ["python", "-m", "joulebench.worker.main", CONTAINER_EXPERIMENT, "--out", CONTAINER_OUT],
            name=f"joulebench-{_slug(experiment.study_name, 30)}-{_study_dir_key(experiment.study_dir)[:8]}-"
                 f"{_slug(experiment.experiment_id, 24)}",
            labels=self.labels_for(experiment),
            mounts=mounts,
            environment=env,
            working_dir="/tmp",
            stop_signal="SIGTERM",
            detach=True,
            **isolation_kwargs(gpus=gpus, settings=s, engine=engine),
        )
        user = s.user
        if user is None:
            uid = os.getuid()
            user = f"{uid}:{os.getgid()}" if uid != 0 else f"{IMAGE_UID}:{IMAGE_UID}"
        kwargs["user"] = user
        if gpus:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["JOULEBENCH_ASSIGNED_GPUS"] = ",".join(gpus)
        return kwargs

    # -- staging
    def _stage(self, experiment: Experiment) -> Path:
        staging = Path(experiment.study_dir) / ".staging" / _slug(experiment.experiment_id, 80)
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "out").mkdir(parents=True)
        atomic_write_json(staging / "experiment.json", experiment.spec)
        os.chmod(staging / "experiment.json", 0o644)
        # The worker runs as an unprivileged user that may differ from the owner of the study folder.
        os.chmod(staging / "out", 0o777)
        return staging

    def _token_file(self, user: str) -> tuple[Path | None, Path | None]:
        if not self.pass_hf_token:
            return None, None
        tok = hf_token()
        if not tok:
            return None, None
        d = Path(tempfile.mkdtemp(prefix="joulebench-secret-"))   # 0700, outside the study folder
        f = d / "hf_token"
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tok)
        if os.getuid() == 0:
            uid, _, gid = user.partition(":")
            try:
                os.chown(f, int(uid), int(gid or uid))
            except (ValueError, OSError):
                os.chmod(f, 0o644)   # the folder stays 0700 on the host
        return f, d

    # -- merge
    def merge_trial(self, experiment: Experiment, staging: Path, trial_id: str) -> bool:
        """Copy one trial's record (and its timeline, first) into the study directory; False if absent."""
        out, study = staging / "out", Path(experiment.study_dir)
        rec = out / "trials" / f"{trial_id}.json"
        if not rec.is_file() or trial_id not in set(experiment.trial_ids):
            return False
        ts = out / "timeseries" / f"{trial_id}.parquet"
        if ts.is_file():   # the timeline first: a record never points at a missing timeline
            atomic_copy(ts, study / "timeseries" / ts.name)
        atomic_copy(rec, study / "trials" / rec.name)
        return True

    def merge(self, experiment: Experiment, staging: Path) -> list[str]:
        """Copy the worker's records and timelines into the study directory (atomic); return trial ids."""
        out = staging / "out"
        wanted = set(experiment.trial_ids)
        finished: list[str] = []
        study = Path(experiment.study_dir)
        for rec in sorted((out / "trials").glob("*.json")) if (out / "trials").is_dir() else []:
            tid = rec.stem
            if rec.name.startswith("."):
                continue
            if tid not in wanted:
                log.warning("ignoring record %s: not a trial of experiment %s", rec.name, experiment.experiment_id)
                continue
            if self.merge_trial(experiment, staging, tid):
                finished.append(tid)
        logs = out / "logs"
        for f in sorted(logs.iterdir()) if logs.is_dir() else []:   # e.g. <trial>.traceback.txt
            if f.is_file() and not f.name.startswith("."):
                atomic_copy(f, study / "logs" / f.name)
        return finished

    # -- the experiment (the reuse policy is ReusingRunner's; these are its container steps)
    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        """One experiment in a container. With ``experiment.worker_key`` set, the container stays after it
        (model loaded, worker idle on its inbox in the mounted staging folder) and serves the next
        experiment with the same key; any other key retires it first (never two models at once)."""
        timeout_s = timeout_s if timeout_s is not None else self.timeout_s
        return super().run_experiment(experiment, on_event=on_event, timeout_s=timeout_s)

    def worker_key(self, experiment: Experiment) -> str | None:
        return experiment.worker_key if not self.command else None   # a diagnostic command serves nothing

    def _launch(self, experiment: Experiment, *, serve: bool) -> tuple["_Live | None", ExperimentOutcome | None]:
        import docker

        outcome = ExperimentOutcome(experiment_id=experiment.experiment_id, exit_code=None)
        staging = self._stage(experiment)
        live = _Live(key=experiment.worker_key if serve else None, staging=staging)
        try:
            image = self.image_for(experiment)
            kwargs = self.container_kwargs(experiment, image=image, staging=staging)
            token_file, live.secret_dir = self._token_file(kwargs["user"])
            if token_file is not None:
                kwargs = self.container_kwargs(experiment, image=image, staging=staging, token_file=token_file)
            if serve:
                inbox = staging / "out" / INBOX
                inbox.mkdir()
                os.chmod(inbox, 0o777)   # the worker (another uid) deletes what it has taken
                live.heartbeat_path = inbox / HEARTBEAT
                live.heartbeat_path.touch()
                kwargs["command"] = list(kwargs["command"]) + [
                    "--inbox", f"{CONTAINER_OUT}/{INBOX}", "--idle-timeout-s", f"{self.idle_timeout_s:g}",
                    "--heartbeat", f"{CONTAINER_OUT}/{INBOX}/{HEARTBEAT}",
                    "--heartbeat-timeout-s", f"{self.heartbeat_timeout_s:g}"]
            self._remove_named(kwargs["name"])
            container = _call(self.client.containers.create, **kwargs)
            live.container = container
            with self._lock:
                self._live[container.id] = container
            _call(container.start)
        except docker.errors.DockerException as exc:
            outcome.error = f"container engine refused the experiment: {_api_message(exc)}"
            outcome.error_kind = "infrastructure"
            self._discard(live)
            return None, outcome
        except Exception as exc:
            from joulebench.errors import JoulebenchError

            self._discard(live)
            if not isinstance(exc, JoulebenchError):
                raise
            outcome.error = str(exc)
            outcome.error_kind = "infrastructure"
            return None, outcome
        live.reader = threading.Thread(target=self._read_logs, args=(container, live.tail, live.events),
                                       name=f"logs-{experiment.experiment_id}", daemon=True)
        live.reader.start()
        live.waiter = threading.Thread(target=self._wait, args=(container, live.waited), daemon=True)
        live.waiter.start()
        if live.heartbeat_path is not None:
            live.beat = threading.Thread(target=_heartbeat, args=(live.heartbeat_path, live.beat_stop,
                                                                   self.heartbeat_timeout_s / 6),
                                         name=f"heartbeat-{experiment.experiment_id}", daemon=True)
            live.beat.start()
        return live, None

    def _send(self, live: "_Live", experiment: Experiment) -> None:
        """Hand the idle container its next experiment: a spec file in its inbox (readable by its user)."""
        live.seq += 1
        atomic_write_bytes(live.staging / "out" / INBOX / f"{live.seq:06d}-{_slug(experiment.experiment_id, 60)}.json",
                           (json.dumps(experiment.spec, indent=1, default=str) + "\n").encode(), mode=0o644)

    def _follow(self, live: "_Live", experiment: Experiment, on_event: EventCallback, timeout_s: float | None,
                *, until_end: bool) -> ExperimentOutcome:
        """Pass events on and merge records until the experiment ends (``until_end``: its
        experiment_end event; else the container's exit), the container dies or the timeout passes."""
        outcome = ExperimentOutcome(experiment_id=experiment.experiment_id, exit_code=None)
        state = {"in_flight": None, "ended": set(), "experiment": experiment, "staging": live.staging,
                 "started": False, "end": None}
        interrupted = False
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            while live.waiter.is_alive():
                self._drain(live.events, state, on_event)
                if until_end and state["end"] is not None:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("experiment %s ran past its %.0f s timeout; stopping its container",
                                experiment.experiment_id, timeout_s)
                    self._stop(live.container)
                    outcome.error = f"timed out after {timeout_s:g} s"
                    outcome.error_kind = "timeout"
                    break
                live.waiter.join(self.poll_s)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: stopping container %s", live.container.name)
            self._stop(live.container)
        if interrupted or outcome.error or state["end"] is None or state["end"].get("error"):
            live.waiter.join(self.settings.stop_timeout_s + 5)   # the container is ending: let it
            live.reader.join(5)
        self._drain(live.events, state, on_event)
        ended = not live.waiter.is_alive()
        if ended and "error" in live.waited and outcome.error is None and not interrupted:
            outcome.error = f"lost the container: {live.waited['error']}"
            outcome.error_kind = "infrastructure"
        outcome.exit_code = live.waited.get("code") if ended else None
        outcome.finished = self.merge(experiment, live.staging)
        if state["in_flight"] and state["in_flight"] not in outcome.finished:
            outcome.in_flight = state["in_flight"]
        outcome.log_tail = _redact("".join(live.tail)[-8000:])
        outcome.started = bool(state["started"])
        if interrupted:
            outcome.error, outcome.error_kind = "interrupted", "interrupted"
        elif outcome.error is None and ended and outcome.exit_code not in (0, None):
            if not (until_end and state["end"] is not None and outcome.exit_code == 3):   # 3: load failed, recorded
                outcome.error = (f"worker exited with code {outcome.exit_code}"
                                 + _oom_hint(live.container, outcome.exit_code))
                outcome.error_kind = "crash"
        elif outcome.error is None and until_end and ended and state["end"] is None:
            outcome.error, outcome.error_kind = "the container ended before it finished the experiment", "crash"
        if outcome.error:
            self._keep_log(experiment, outcome)
        outcome.reusable = (until_end and not ended and outcome.error is None and state["end"] is not None
                            and not state["end"].get("error"))
        if interrupted:
            raise KeyboardInterrupt
        return outcome

    def _stop_idle(self, live: "_Live") -> None:
        """Stop the idle serving container (a ``stop`` file: it closes its engine), then remove it."""
        if live.alive():
            try:
                atomic_write_bytes(live.staging / "out" / INBOX / "stop", b"stop\n", mode=0o644)
                live.waiter.join(self.settings.stop_timeout_s)
            except OSError:
                pass
        self._discard(live)

    def _discard(self, live: "_Live") -> None:
        live.beat_stop.set()
        if live.container is not None:
            self._remove(live.container)
        if live.secret_dir is not None:
            shutil.rmtree(live.secret_dir, ignore_errors=True)
        shutil.rmtree(live.staging, ignore_errors=True)

    def _remove_named(self, name: str) -> None:
        import docker

        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            return
        if not _orphaned(old):
            from joulebench.errors import JoulebenchError

            raise JoulebenchError(f"container {name} belongs to a running dispatcher "
                                  f"(pid {(old.labels or {}).get(LABEL_PID)}): is this study running twice?")
        log.warning("removing an earlier container named %s", name)
        self._remove(old)

    def _stop(self, container) -> None:
        import docker

        try:
            _call(container.stop, timeout=int(self.settings.stop_timeout_s), attempts=2)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("stop of %s failed (%s); killing it", container.name, exc)
            try:
                container.kill()
            except Exception:
                pass

    @staticmethod
    def _wait(container, result: dict[str, Any]) -> None:
        try:
            r = container.wait()
            result["code"] = int(r.get("StatusCode", -1))
        except Exception as exc:   # the engine went away or the container was removed under us
            result["error"] = _api_message(exc)

    @staticmethod
    def _read_logs(container, tail: collections.deque, events: queue.Queue) -> None:
        buf = b""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    tail.append(line + "\n")
                    ev = parse_event(line)
                    if ev is not None:
                        events.put(ev)
        except Exception as exc:
            tail.append(f"[joulebench] log stream ended: {_api_message(exc)}\n")
        if buf:
            line = buf.decode("utf-8", "replace")
            tail.append(line + "\n")
            ev = parse_event(line)
            if ev is not None:
                events.put(ev)

    def _drain(self, events: queue.Queue, state: dict[str, Any], on_event: EventCallback) -> None:
        while True:
            try:
                ev = events.get_nowait()
            except queue.Empty:
                return
            kind = ev.get("event")
            eid = state["experiment"].experiment_id
            if kind == "experiment_start" and ev.get("experiment_id") == eid:
                state["started"] = True
            elif kind == "experiment_end" and ev.get("experiment_id") == eid:
                state["end"] = ev
            elif kind == "trial_start":
                state["in_flight"] = ev.get("trial_id")
            elif kind == "trial_end":
                # The record is on the mounted volume already: merge it now, so the orchestrator (and a
                # crash of this dispatcher) sees it before the experiment ends.
                try:
                    self.merge_trial(state["experiment"], state["staging"], str(ev.get("trial_id")))
                except OSError as exc:
                    log.warning("could not merge the record of %s yet: %s", ev.get("trial_id"), exc)
                state["ended"].add(ev.get("trial_id"))
                if state["in_flight"] == ev.get("trial_id"):
                    state["in_flight"] = None
            try:
                on_event(ev)
            except Exception as exc:   # a display callback must not kill the experiment
                log.error("event callback failed: %s", exc)

    def _keep_log(self, experiment: Experiment, outcome: ExperimentOutcome) -> None:
        path = Path(experiment.study_dir) / "logs" / f"{_slug(experiment.experiment_id, 80)}.container.log"
        header = (f"# experiment {experiment.experiment_id}: {outcome.error} "
                  f"(exit code {outcome.exit_code}, kind {outcome.error_kind})\n")
        atomic_write_bytes(path, (header + outcome.log_tail).encode())


INBOX = "inbox"            # in the staging out/ folder: specs of the next experiments, and ``stop``
HEARTBEAT = ".heartbeat"   # touched by the dispatcher while it lives; an idle worker ends when it goes stale


@dataclass
class _Live:
    """A running experiment container and what follows it."""

    key: str | None
    staging: Path
    container: Any = None
    secret_dir: Path | None = None
    heartbeat_path: Path | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))
    waited: dict[str, Any] = field(default_factory=dict)
    reader: threading.Thread | None = None
    waiter: threading.Thread | None = None
    beat: threading.Thread | None = None
    beat_stop: threading.Event = field(default_factory=threading.Event)
    seq: int = 0

    def alive(self) -> bool:
        return self.waiter is not None and self.waiter.is_alive()


def _heartbeat(path: Path, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            os.utime(path)
        except OSError:
            return


def _orphaned(container) -> bool:
    """True when the dispatcher that started this container is gone (or is this process)."""
    labels = container.labels or {}
    try:
        pid = int(labels.get(LABEL_PID, "0"))
    except ValueError:
        pid = 0
    host = socket.gethostname()
    if labels.get(LABEL_HOST) not in (None, host):
        log.warning("container %s was started from host %s; not removed from here",
                    container.name, labels.get(LABEL_HOST))
        return False
    if pid not in (0, os.getpid()) and pid_alive(pid):
        log.info("container %s belongs to live dispatcher pid %d, left alone", container.name, pid)
        return False
    return True


def _api_message(exc: BaseException) -> str:
    expl = getattr(exc, "explanation", None)
    return str(expl or exc).strip()


def _oom_hint(container, code: int | None) -> str:
    if code == 137:
        try:
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                return " (killed at the container memory limit: raise ContainerSettings.mem_limit)"
        except Exception:
            pass
        return " (SIGKILL: memory limit or an outside kill)"
    return ""


def _redact(text: str) -> str:
    tok = hf_token()
    return text.replace(tok, "[hf-token]") if tok and len(tok) >= 8 else text
