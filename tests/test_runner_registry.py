"""Runners chosen in one place (runners/registry.py), each runner's own options (config/runner.py), and the
experiment's GPUs reaching every runner from the orchestrator."""
from __future__ import annotations

import json

import pytest

from joulebench.config import load_study, parse_study_text
from joulebench.config.runner import DockerOptions, ProcessOptions, RayOptions, RunnerOptions
from joulebench.errors import JoulebenchError, StudyError
from joulebench.runners import registry
from joulebench.runners.base import Capabilities, ExperimentOutcome, Runner
from joulebench.runners.process import ProcessRunner
from joulebench.runners.registry import RunnerKind, capabilities, capabilities_of, make_runner, resolve_kind

from .conftest import tiny_study

UUIDS = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"]


def test_auto_is_resolved_by_the_probe_and_logged_once():
    said = []
    assert resolve_kind("auto", said.append, probe=lambda: True) is RunnerKind.DOCKER
    assert resolve_kind(None, said.append, probe=lambda: False) is RunnerKind.PROCESS
    assert said == ["runner: docker (auto)", "runner: process (auto)"]
    assert resolve_kind("ray", said.append, probe=lambda: pytest.fail("probed")) is RunnerKind.RAY
    assert len(said) == 2
    with pytest.raises(JoulebenchError, match="unknown runner 'podman'"):
        resolve_kind("podman")


def test_declared_capabilities():
    assert capabilities("process") == Capabilities(reuses_workers=True, prestarts_workers=True, host_processes=True,
                                                   host_interpreter=True)
    assert capabilities("docker").builds_images and capabilities("docker").reuses_workers
    # a container's worker is not started early; its host PIDs (the engine names the first) are named for the
    # busy-GPU gate, so a container kept between rounds is not another user of its GPU
    assert not capabilities("docker").prestarts_workers and capabilities("docker").host_processes
    assert capabilities("docker").host_gpus and not capabilities("docker").host_interpreter
    ray = capabilities("ray")
    assert ray.parallel_experiments and not ray.host_gpus and not ray.reuses_workers
    assert capabilities_of(ProcessRunner()) is capabilities("process")

    class Other(Runner):
        name = "other"

        def run_experiment(self, experiment, *, on_event, timeout_s):
            raise NotImplementedError

    assert capabilities_of(Other()) == Capabilities()
    with pytest.raises(JoulebenchError, match="resolve"):
        capabilities("auto")


def test_make_runner_uses_each_runners_options():
    opts = RunnerOptions.model_validate({"python": "/venv/bin/python", "image": "img:1", "address": "auto",
                                         "resources": {"H100": 1}, "ray_node_runner": "docker"})
    p = make_runner("process", opts)
    assert isinstance(p, ProcessRunner) and p.python == "/venv/bin/python"
    d = make_runner(RunnerKind.DOCKER, opts)
    assert d.name == "docker" and d.image == "img:1"
    r = make_runner("ray", opts)
    assert (r.address, r.resources, r.node_runner, r.image, r.python) == (
        "auto", {"H100": 1}, "docker", "img:1", "/venv/bin/python")


def test_a_ray_node_builds_its_container_runner_from_the_studys_docker_options(tmp_path, monkeypatch):
    """With ray_node_runner: docker, each node's containers get the GPUs the way the study says (Podman needs
    device-nodes or cdi), with its mounts, user and interpreter, not a bare DockerRunner."""
    from joulebench.runners.docker.runner import DockerRunner
    from joulebench.runners.ray import _node_runner

    opts = RunnerOptions.model_validate({"runner_options": {"ray_node_runner": "docker", "docker": {
        "gpu_passthrough": "cdi", "cdi_spec_dirs": ["/etc/cdi"], "user": "0:0", "python": "python3",
        "driver_dir": "/usr/lib/x86_64-linux-gnu", "env": {"HF_HOME": "/hf"},
        "mounts": [{"source": "/opt/models", "target": "/models"}]}}}["runner_options"])
    r = make_runner("ray", opts)
    assert r.docker == opts.docker
    prepared = []
    monkeypatch.setattr(DockerRunner, "prepare", lambda self, d, name: prepared.append((d, name)))
    node = _node_runner("docker", "img:2", None, tmp_path, "s", r.docker)
    assert isinstance(node, DockerRunner) and prepared == [(tmp_path, "s")]
    assert (node.image, node.gpu_passthrough, node.cdi_spec_dirs, node.python, node.driver_dir) == (
        "img:2", "cdi", ["/etc/cdi"], "python3", "/usr/lib/x86_64-linux-gnu")
    assert node.settings.user == "0:0" and node.settings.env == {"HF_HOME": "/hf"}
    assert node.settings.extra_mounts == [("/opt/models", "/models", True)]


# ---------------------------------------------------------------------- per-runner options
def test_flat_and_grouped_options_are_the_same():
    flat = RunnerOptions.model_validate({"python": "py", "environments": {"vllm": ".venvs/vllm"}, "image": "i",
                                         "address": "a", "resources": {"X": 2}, "ray_node_runner": "docker",
                                         "timeout_s": 9})
    grouped = RunnerOptions.model_validate({"process": {"python": "py", "environments": {"vllm": ".venvs/vllm"}},
                                            "docker": {"image": "i"}, "timeout_s": 9,
                                            "ray": {"address": "a", "resources": {"X": 2}, "node_runner": "docker"}})
    assert flat == grouped
    assert flat.process == ProcessOptions(python="py", environments={"vllm": ".venvs/vllm"})
    assert flat.docker == DockerOptions(image="i") and flat.ray == RayOptions(address="a", resources={"X": 2},
                                                                               node_runner="docker")
    assert flat.environment_options() == {"environments": {"vllm": ".venvs/vllm"}, "python": "py"}
    # a dumped study (grouped) loads again
    assert RunnerOptions.model_validate(flat.model_dump()) == flat


@pytest.mark.parametrize("yaml_opts,path,hint", [
    ("  image: 3\n", "runner_options.image (line 4)", None),
    ("  ray_node_runner: dockr\n", "runner_options.ray_node_runner (line 4)", "did you mean 'docker'?"),
    ("  environments: {vllm: [1]}\n", "runner_options.environments.vllm (line 4)", None),
    ("  imag: x\n", "runner_options.imag (line 4)", "did you mean 'image'?"),
    ("  ray:\n    node_runner: dockr\n", "runner_options.ray.node_runner (line 5)", "did you mean 'docker'?"),
    ("  docker: {image: x}\n  image: y\n", "runner_options (line 3)", None),
])
def test_option_errors_name_the_yaml_path_as_written(yaml_opts, path, hint):
    with pytest.raises(StudyError) as ei:
        parse_study_text(f"name: a\nmodel: synthetic:tiny-llama\nrunner_options:\n{yaml_opts}", file="s.yaml")
    errs = getattr(ei.value, "errors", [ei.value])
    assert any(e.path == path and (hint is None or e.hint == hint) for e in errs), [(e.path, e.hint) for e in errs]


def test_every_shipped_study_still_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    studies = [p for d in ("studies", "benchmarks/studies", "src/joulebench/studies")
               for p in sorted((root / d).glob("*.yaml"))]
    assert studies
    for p in studies:
        load_study(p)


# ---------------------------------------------------------------------- GPUs reach every runner
class Recording(Runner):
    """Records each experiment it is handed; the worker 'crashes' (no records)."""

    max_concurrent = 1

    def __init__(self, kind: str):
        self.name = kind
        self.seen = []

    def run_experiment(self, experiment, *, on_event, timeout_s):
        self.seen.append(experiment)
        return ExperimentOutcome(experiment.experiment_id, exit_code=1, error="recorded", error_kind="crash")

    def prestart(self, *a, **kw):
        pass

    def live_pids(self):
        return set()

    def cancel_all(self):
        pass


@pytest.mark.parametrize("kind", ["process", "docker", "ray"])
def test_the_orchestrator_gives_every_runner_the_experiments_gpus(kind, write_study, tmp_path, monkeypatch):
    from joulebench.study.run import run_study

    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps({"gpus": [{"uuid": u} for u in UUIDS]}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    rec = Recording(kind)
    entry = registry.REGISTRY[RunnerKind(kind)]
    monkeypatch.setitem(registry.REGISTRY, RunnerKind(kind),
                        registry.RunnerEntry(entry.kind, lambda opts: rec, entry.capabilities))
    study = tiny_study(f"gpus-{kind}", runner=kind, sweep={"device": ["cuda:1", "cpu"]})
    run_study(write_study(study), out=tmp_path / "r", quiet=True, report=False)
    by_device = {e.spec.first_params["device"]: e.gpus for e in rec.seen}
    assert by_device["cpu"] == []
    # host GPUs by UUID; a Ray node's GPUs by the ordinals the device names (Ray assigns the cards)
    assert by_device["cuda:1"] == (["1"] if kind == "ray" else [UUIDS[1]])
