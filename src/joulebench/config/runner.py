"""``runner_options``: what every runner shares, and each runner's own options.

A study may write each runner's options flat, as before::

    runner_options: {timeout_s: 600, image: my/image:tag, address: auto}

or grouped by runner::

    runner_options: {timeout_s: 600, docker: {image: my/image:tag}, ray: {address: auto}}

The flat keys are moved into their group before validation (:data:`FLAT_KEYS`), and
:func:`flat_yaml_path` maps a validation error's location back to the key as written.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ProcessOptions(_Strict):
    python: str | None = Field(None, description="interpreter of an engine environment (process runner)")
    environments: dict[str, str] = Field(default_factory=dict, description="backend -> python interpreter")


class DockerMount(_Strict):
    source: str = Field(description="absolute host path")
    target: str = Field(description="absolute path inside the container")
    read_only: bool = True

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, v: str, info) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{info.field_name} must be an absolute path, not {v!r}")
        if "\x00" in v or ":" in v:
            raise ValueError(f"{info.field_name} {v!r} may not contain ':' or NUL")
        return os.path.normpath(v)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Environment names that carry secrets: refused here (they would show in `inspect` and in logs); the
# Hugging Face token goes in as a read-only file instead.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


class DockerOptions(_Strict):
    image: str | None = Field(None, description="container image override (docker runner)")
    gpu_passthrough: Literal["auto", "device-request", "device-nodes", "cdi"] = Field(
        "auto", description="how containers get their GPUs: an NVIDIA device request (Docker with the NVIDIA "
                            "Container Toolkit), the device nodes plus a read-only bind of the driver folder "
                            "(Podman, whose Docker API ignores device requests), or CDI device names through "
                            "Podman's own API (Podman only, never picked by auto); auto picks per engine")
    driver_dir: str | None = Field(None, description="host folder of the NVIDIA driver libraries (libcuda.so.1) "
                                                     "bound read-only for device-nodes; default: from ldconfig")
    cdi_spec_dirs: list[str] | None = Field(None, description="cdi: folders of the CDI specs that name the GPUs "
                                                              "(default: /etc/cdi, /var/run/cdi)")
    mounts: list[DockerMount] = Field(default_factory=list, description="extra bind mounts of every container")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment of every container "
                                                                  "(no secrets: visible in inspect)")
    python: str = Field("python", description="the interpreter in the image that runs the worker")
    user: str | None = Field(None, description="UID[:GID] inside the container; default: the host user, or the "
                                               "images' unprivileged user 10001 when the dispatcher is root")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9]+(:[0-9]+)?", v):
            raise ValueError(f"user must be UID or UID:GID (numbers), not {v!r}")
        return v

    @field_validator("driver_dir")
    @classmethod
    def _driver_dir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"driver_dir must be an absolute path, not {v!r}")
        return v

    @field_validator("cdi_spec_dirs")
    @classmethod
    def _cdi_spec_dirs(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("cdi_spec_dirs must name at least one folder (or be left out)")
            for d in v:
                if not d.startswith("/"):
                    raise ValueError(f"cdi_spec_dirs must be absolute paths, not {d!r}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment name {name!r} is not a valid variable name")
            if _SECRET_NAME.search(name):
                raise ValueError(f"environment name {name!r} looks like a secret: container environment is "
                                 "visible to anyone who can inspect the container; pass secrets as files "
                                 "(the Hugging Face token is mounted read-only by the runner)")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"python must be one interpreter name or absolute path (no spaces), not {v!r}")
        return v


class RayOptions(_Strict):
    address: str | None = Field(None, description="Ray cluster address (ray runner)")
    resources: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per experiment")
    node_runner: Literal["process", "docker"] = Field(
        "process", description="how a Ray task runs its experiment on the node: local process or container")


# flat key as written in runner_options -> (group, field)
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "python": ("process", "python"), "environments": ("process", "environments"),
    "image": ("docker", "image"),
    "address": ("ray", "address"), "resources": ("ray", "resources"), "ray_node_runner": ("ray", "node_runner"),
}
_NESTED_TO_FLAT = {v: k for k, v in FLAT_KEYS.items()}


class RunnerOptions(_Strict):
    one_worker_per_trial: bool = False
    reuse_workers: bool = Field(True, description="a worker serves its load group's trials in later rounds too "
                                                  "(one model load per study and load group; process and docker runners)")
    timeout_s: float = Field(3600.0, gt=0, description="per experiment (one worker)")
    gpus: list[int | str] | None = Field(
        None, description="host GPUs this study may use (indices or UUIDs); a device outside them is refused")
    on_invalid: Literal["error", "skip"] = "error"
    # sharing a GPU box (docs/nightly.md)
    on_busy_lock: Literal["wait", "skip", "fail"] = Field(
        "wait", description="another joulebench holds these GPUs: wait (bounded), skip (exit 0) or fail (exit 75)")
    lock_wait_s: float = Field(3600.0, ge=0, description="longest wait for the GPU lock")
    busy_gpu: Literal["wait", "skip", "stop", "allow"] = Field(
        "wait", description="other users on an experiment's GPUs: wait (bounded, then stop), skip (defer to a "
                            "later round), stop (resumable), allow (measure, flagged foreign_process)")
    busy_wait_s: float = Field(600.0, ge=0, description="longest wait for busy GPUs before stopping")
    busy_poll_s: float = Field(5.0, gt=0, description="how often busy GPUs are checked while waiting")
    busy_memory_bytes: int = Field(1 << 30, ge=0, description="memory in use (no process of ours) that means busy")
    process: ProcessOptions = ProcessOptions()
    docker: DockerOptions = DockerOptions()
    ray: RayOptions = RayOptions()

    @model_validator(mode="before")
    @classmethod
    def _group_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in FLAT_KEYS for k in data):
            return data
        out = {k: v for k, v in data.items() if k not in FLAT_KEYS}
        for flat, (group, name) in FLAT_KEYS.items():
            if flat not in data:
                continue
            sub = out.get(group)
            sub = dict(sub) if isinstance(sub, dict) else ({} if sub is None else sub)
            if not isinstance(sub, dict):
                return data   # the group itself is wrong: let validation say so
            if name in sub:
                raise ValueError(f"'{flat}' is given twice: as runner_options.{flat} and "
                                 f"runner_options.{group}.{name}")
            sub[name] = data[flat]
            out[group] = sub
        return out

    def environment_options(self) -> dict[str, Any]:
        """The mapping runners/environments.resolve_python reads (``environments``, ``python``)."""
        return {"environments": dict(self.process.environments), "python": self.process.python}


def flat_yaml_path(loc: tuple, lines: dict[tuple, int]) -> tuple:
    """A validation error at ``runner_options.<group>.<field>`` that the study wrote flat: the flat path."""
    i = next((k for k, p in enumerate(loc) if p == "runner_options"), None)
    if i is None or len(loc) < i + 3:
        return loc
    flat = _NESTED_TO_FLAT.get((loc[i + 1], loc[i + 2]))
    prefix = tuple(loc[:i + 1])
    if flat is None or (prefix + (loc[i + 1],)) in lines:
        return loc
    return prefix + (flat,) + tuple(loc[i + 3:])
