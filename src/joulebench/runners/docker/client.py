"""The container engine: connecting (Docker, or Podman's Docker-compatible socket), bounded retries of
transient API errors, and the container operations the runner needs (create, stop, remove, sweep).

Transient engine API errors (connection drops, 5xx) are retried a bounded number of times with
tenacity; permanent ones (no such image, invalid request) fail at once with the engine's message.
Containers left by a dispatcher that died (SIGKILL, power loss) carry its host and pid in their
labels; :meth:`Containers.sweep` removes those of a study whose dispatcher is gone.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

from joulebench.runners.docker.request import (LABEL_EXPERIMENT, LABEL_HOST, LABEL_PID, LABEL_RUNNER, LABEL_STUDY,
                                               isolation_kwargs)
from joulebench.system.proc import pid_alive

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


# --------------------------------------------------------------------------- connection

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


def _ping_unix_socket(path: str, timeout_s: float) -> bool:
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


def engine_available(timeout_s: float = 1.0) -> bool:
    """True when a Docker-API engine answers a ping at DOCKER_HOST or the default socket (fast)."""
    host = docker_host()
    if host.startswith("unix://"):
        return _ping_unix_socket(host[len("unix://"):], timeout_s)
    try:   # tcp:// or ssh:// hosts: let the SDK handle TLS settings
        import docker

        client = docker.from_env(timeout=max(1, int(timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def api_message(exc: BaseException) -> str:
    """The engine's own explanation of an API error (or the exception's text)."""
    expl = getattr(exc, "explanation", None)
    return str(expl or exc).strip()


# --------------------------------------------------------------------------- retries

def is_transient(exc: BaseException) -> bool:
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
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=max_wait_s),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def call(fn: Callable, *args, attempts: int = 4, **kwargs):
    """``fn(*args, **kwargs)`` with transient engine errors retried."""
    return retrying(attempts)(fn, *args, **kwargs)


# --------------------------------------------------------------------------- creating

def create_container(client, kwargs: dict[str, Any]):
    """A new container from docker SDK ``containers.create`` arguments, with transient errors retried.
    Arguments holding CDI device names (``cdi_devices``, gpu_passthrough cdi) go through Podman's libpod
    API (libpod.py), whose answer is an ordinary docker SDK ``Container`` all the same."""
    from joulebench.runners.docker import libpod

    if libpod.CDI_DEVICES not in kwargs:
        return call(client.containers.create, **kwargs)
    cid = call(libpod.create_id, client, kwargs)
    return call(client.containers.get, cid)


# --------------------------------------------------------------------------- probes

def run_probe(client, image: str, command: list[str], *, gpus: list[str] | None = None,
              timeout_s: float = 120, labels: dict[str, str] | None = None, passthrough=None,
              mounts: list | None = None, environment: dict[str, str] | None = None, user: str | None = None,
              extra_security_opt: list[str] | None = None) -> tuple[int | None, str]:
    """Run a short command in ``image`` with the runner's isolation and GPU passthrough; (exit code or None
    on timeout, output). ``extra_security_opt`` adds to the isolation's (e.g. ``seccomp=unconfined`` to
    measure seccomp's share). The container is always removed."""
    import docker

    kw = isolation_kwargs(gpus=gpus, gpu_ulimits=False, passthrough=passthrough)
    if extra_security_opt:
        kw["security_opt"] = list(kw.get("security_opt") or []) + list(extra_security_opt)
    if user:
        kw["user"] = user
    env = {"HOME": "/tmp", **kw.pop("environment", {}), **(environment or {})}
    all_mounts = list(mounts or []) + kw.pop("mounts", [])
    if all_mounts:
        kw["mounts"] = all_mounts
    c = create_container(client, dict(image=image, command=command, detach=True,
                                      labels={LABEL_RUNNER: "probe", **(labels or {})}, environment=env, **kw))
    try:
        call(c.start)
        try:
            code = int(c.wait(timeout=timeout_s).get("StatusCode", -1))
        except Exception:   # requests' ReadTimeout: the probe hung
            code = None
        out = c.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return code, out
    finally:
        try:
            call(c.remove, force=True)
        except docker.errors.NotFound:
            pass


# --------------------------------------------------------------------------- containers of a dispatcher

def orphaned(container) -> bool:
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


class Containers:
    """This dispatcher's containers on one engine: created with retries, remembered until removed."""

    def __init__(self, connect_client: Callable[[], Any], stop_timeout_s: float):
        self._connect = connect_client
        self._client = None
        self.stop_timeout_s = stop_timeout_s
        self._live: dict[str, Any] = {}     # container id -> container, removed in close()
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def create(self, kwargs: dict[str, Any]):
        """A new container (an orphaned one of the same name is removed first)."""
        self.remove_named(kwargs["name"])
        container = create_container(self.client, kwargs)
        with self._lock:
            self._live[container.id] = container
        return container

    def remove(self, container) -> None:
        import docker

        try:
            call(container.remove, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:   # never mask the experiment's own error with a clean-up error
            log.error("could not remove container %s: %s", getattr(container, "name", container), exc)
        with self._lock:
            self._live.pop(getattr(container, "id", None), None)

    def remove_named(self, name: str) -> None:
        import docker

        try:
            old = self.client.containers.get(name)
        except (docker.errors.NotFound, docker.errors.APIError):
            return
        if not orphaned(old):
            from joulebench.errors import JoulebenchError

            raise JoulebenchError(f"container {name} belongs to a running dispatcher "
                                  f"(pid {(old.labels or {}).get(LABEL_PID)}): is this study running twice?")
        log.warning("removing an earlier container named %s", name)
        self.remove(old)

    def stop(self, container) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout_s``; a failed stop kills it."""
        import docker

        try:
            call(container.stop, timeout=int(self.stop_timeout_s), attempts=2)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("stop of %s failed (%s); killing it", container.name, exc)
            try:
                container.kill()
            except Exception:
                pass

    def sweep(self, study_name: str) -> list[str]:
        """Remove this study's containers whose dispatcher is gone (or is this process); returns names."""
        containers = call(self.client.containers.list, all=True, filters={"label": f"{LABEL_STUDY}={study_name}"})
        removed = []
        for c in containers:
            if not orphaned(c):
                continue
            log.warning("removing leftover container %s of study %s (experiment %s)",
                        c.name, study_name, (c.labels or {}).get(LABEL_EXPERIMENT))
            self.remove(c)
            removed.append(c.name)
        return removed

    def close(self) -> None:
        """Remove every container still remembered, then close the client."""
        for c in list(self._live.values()):
            self.remove(c)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
