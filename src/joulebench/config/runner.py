"""``runner_options``: what every runner shares, and each runner's own options.

A study may write each runner's options flat, as before::

    runner_options: {timeout_s: 600, image: my/image:tag, address: auto}

or grouped by runner::

    runner_options: {timeout_s: 600, docker: {image: my/image:tag}, ray: {address: auto}}

The flat keys are moved into their group before validation (:data:`FLAT_KEYS`), and
:func:`flat_yaml_path` maps a validation error's location back to the key as written.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ProcessOptions(_Strict):
    python: str | None = Field(None, description="interpreter of an engine environment (process runner)")
    environments: dict[str, str] = Field(default_factory=dict, description="backend -> python interpreter")


class DockerOptions(_Strict):
    image: str | None = Field(None, description="container image override (docker runner)")


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
