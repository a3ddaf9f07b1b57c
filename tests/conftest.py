"""Shared test helpers: paths, tiny study files, running the real CLI."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from joulebench.testing import install_from_environment

from .engines import ENGINES, open_engine, skip_unless_selected

# A shell without job control starts background commands (`make test &`, a detached CI job) with
# SIGINT ignored, and an ignored signal stays ignored across exec: every process the tests start
# would then shrug off the Ctrl-C that the interrupt tests send. Give them the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The test process is an entry point too: a test that sets $JOULEBENCH_FAKE_NVML gets the fake NVML
# in this process, as the CLI, the worker and the sampler get it in theirs.
install_from_environment()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JOULEBENCH_TEST_DATA", REPO.parent / "shared" / "data"))
AIENERGYSCORE = SHARED_DATA / "aienergyscore_text_generation.jsonl"
JOULEBENCH = [sys.executable, "-m", "joulebench.cli"]

# Fast measurement settings for CPU tests: short windows, few warm-up passes, no idle references.
FAST_MEASUREMENT = {
    "min_window_s": 0.3, "device_idle_s": 0, "loaded_idle_s": 0,
    "warmup": {"cv_target": 0.5, "k": 2, "min_passes": 1, "max_passes": 2},
}



def load_benchmark(name: str):
    """The script benchmarks/<name>.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module

def tiny_study(name: str = "t", **overrides) -> dict:
    study = {
        "name": name, "model": "synthetic:tiny-llama", "backend": "transformers", "device": "cpu",
        "engine": {"dtype": "float32"},
        "workload": {"dataset": "synthetic", "prompts": 4, "input_tokens": 8, "max_output_tokens": 4},
        "repeats": 1, "measurement": FAST_MEASUREMENT, "runner": "process",
    }
    study.update(overrides)
    return study


@pytest.fixture(autouse=True, scope="session")
def _private_lock_dir(tmp_path_factory):
    """The GPU/CPU locks (locks.py) of this test session live apart from other sessions and real runs,
    so concurrent test sessions on one machine do not queue behind each other's studies."""
    old = os.environ.get("JOULEBENCH_LOCK_DIR")
    os.environ["JOULEBENCH_LOCK_DIR"] = str(tmp_path_factory.mktemp("locks"))
    yield
    if old is None:
        os.environ.pop("JOULEBENCH_LOCK_DIR", None)
    else:
        os.environ["JOULEBENCH_LOCK_DIR"] = old


@pytest.fixture
def write_study(tmp_path):
    def _write(study: dict, name: str = "study.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(study, sort_keys=False))
        return p

    return _write


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([*JOULEBENCH, *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=cwd)


class ContainerEngine:
    """One Docker-API engine for the ``containers`` tests: its kind (``podman`` / ``docker``), SDK client, host."""

    def __init__(self, kind: str, client, host: str):
        self.kind, self.client, self.host = kind, client, host


@pytest.fixture(scope="module", params=ENGINES)
def container_engine(request):
    """Each container engine in turn (ids ``podman``, ``docker``; tests/engines.py says where they answer).

    ``DOCKER_HOST`` points at it for the module's tests, so code that connects by itself reaches it too.
    """
    client, host = open_engine(request.param)
    mp = pytest.MonkeyPatch()
    mp.setenv("DOCKER_HOST", host)
    yield ContainerEngine(request.param, client, host)
    client.close()
    mp.undo()


def pytest_runtest_setup(item):
    """Before any fixture is set up (an image build, say): skip what the other engine alone runs."""
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("container_engine") if callspec else None
    if kind:
        skip_unless_selected(kind, item)
