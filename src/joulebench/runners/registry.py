"""Runners are chosen here: a study's ``runner`` kind -> its class and declared :class:`Capabilities`.

``auto`` is resolved once, by :func:`resolve_kind` (docker where a container engine answers,
else process), for ``run``, ``resume`` and the nightly run alike. :func:`make_runner` builds
the runner of a resolved kind from the study's ``runner_options``. Runner modules are imported
only when their kind is used (docker and ray have optional dependencies).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from joulebench.errors import JoulebenchError
from joulebench.runners.base import Capabilities, Runner

if TYPE_CHECKING:
    from joulebench.config.runner import DockerOptions, RunnerOptions


class RunnerKind(str, enum.Enum):
    AUTO = "auto"
    PROCESS = "process"
    DOCKER = "docker"
    RAY = "ray"


def _process(opts: "RunnerOptions") -> Runner:
    from joulebench.runners.process import ProcessRunner

    return ProcessRunner(python=opts.process.python)


def docker_runner(d: "DockerOptions", *, image: str | None = None) -> Runner:
    """A DockerRunner from ``runner_options.docker`` (also what a Ray node with ``ray_node_runner: docker``
    builds, from the same typed options)."""
    from joulebench.runners.docker.request import ContainerSettings
    from joulebench.runners.docker.runner import DockerRunner

    settings = ContainerSettings(env=dict(d.env), extra_mounts=[(m.source, m.target, m.read_only) for m in d.mounts],
                                 user=d.user)
    return DockerRunner(image=image or d.image, settings=settings, python=d.python,
                        gpu_passthrough=d.gpu_passthrough, driver_dir=d.driver_dir, cdi_spec_dirs=d.cdi_spec_dirs)


def _docker(opts: "RunnerOptions") -> Runner:
    return docker_runner(opts.docker)


def _ray(opts: "RunnerOptions") -> Runner:
    from joulebench.runners.ray import RayRunner

    return RayRunner(address=opts.ray.address, resources=opts.ray.resources, node_runner=opts.ray.node_runner,
                     image=opts.docker.image, python=opts.process.python, docker=opts.docker)


@dataclass(frozen=True)
class RunnerEntry:
    kind: RunnerKind
    build: Callable[["RunnerOptions"], Runner]
    capabilities: Capabilities


REGISTRY: dict[RunnerKind, RunnerEntry] = {
    RunnerKind.PROCESS: RunnerEntry(RunnerKind.PROCESS, _process, Capabilities(
        reuses_workers=True, prestarts_workers=True, host_processes=True, host_interpreter=True)),
    RunnerKind.DOCKER: RunnerEntry(RunnerKind.DOCKER, _docker, Capabilities(
        reuses_workers=True, host_processes=True, builds_images=True)),
    RunnerKind.RAY: RunnerEntry(RunnerKind.RAY, _ray, Capabilities(
        parallel_experiments=True, host_gpus=False)),
}
KIND_NAMES = [k.value for k in RunnerKind]


def docker_engine_available() -> bool:
    """A container engine answers (fast probe); False when the docker runner cannot be imported."""
    try:
        from joulebench.runners.docker.client import engine_available
    except ImportError:
        return False
    return engine_available()


def resolve_kind(kind: str | RunnerKind | None, log: Callable[[str], None] | None = None, *,
                 probe: Callable[[], bool] = docker_engine_available) -> RunnerKind:
    """The concrete runner kind: ``auto`` (or None) -> docker where an engine answers, else process."""
    try:
        k = RunnerKind(kind or RunnerKind.AUTO)
    except ValueError:
        raise JoulebenchError(f"unknown runner '{kind}'; one of: {', '.join(KIND_NAMES)}") from None
    if k is not RunnerKind.AUTO:
        return k
    k = RunnerKind.DOCKER if probe() else RunnerKind.PROCESS
    if log is not None:
        log(f"runner: {k.value} (auto)")
    return k


def entry(kind: str | RunnerKind) -> RunnerEntry:
    k = RunnerKind(kind)
    if k is RunnerKind.AUTO:
        raise JoulebenchError("resolve the runner kind 'auto' first (registry.resolve_kind)")
    return REGISTRY[k]


def capabilities(kind: str | RunnerKind) -> Capabilities:
    return entry(kind).capabilities


def capabilities_of(runner: Runner) -> Capabilities:
    """The declared capabilities of a runner object (a runner of no registered kind: the defaults)."""
    try:
        return REGISTRY[RunnerKind(runner.name)].capabilities
    except (ValueError, KeyError):
        return Capabilities()


def make_runner(kind: str | RunnerKind, options: "RunnerOptions") -> Runner:
    """The runner of a resolved ``kind``, built from the study's ``runner_options``."""
    return entry(kind).build(options)
