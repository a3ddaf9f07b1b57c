"""``docker compose up`` for real: the quickstart through compose.yaml, checked in the mounted results folder.

Compose v1 (``docker-compose`` 1.29, Debian's) or v2 (``docker compose``) against a Docker Engine
(scripts/dockerd-setup.sh; tests/engines.py says where it answers), with no registry: every image
builds from the local base image (``JOULEBENCH_BASE_IMAGE``) with the torch CPU wheel in
``docker/wheels/`` and the host's CA bundle (``JOULEBENCH_CA_BUNDLE``) for pip. The project is a
copy of the files compose builds from, in a temporary folder, so the test runs it exactly as a user
does from a checkout: ``PWD`` is that folder, the dispatcher container starts the engine containers
through the mounted socket, and the records land in ``<folder>/joulebench-results/``. Skips cleanly
without compose, a Docker engine, the base image or the wheel.

CI time: compose builds the dispatcher image; the transformers image is the one the SDK builds for
the integration tests (``joulebench images build`` tags it ``:latest`` too; a no-op when current),
since compose's build of the same Dockerfile misses the SDK build's layer cache (the two build
contexts differ in tar metadata) and would cost a second ~5 minute build.
``JOULEBENCH_TEST_COMPOSE_BUILD=all`` builds every service through compose instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from .engines import open_engine, prune_build_leftovers

pytestmark = [pytest.mark.containers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2) where the CLI has it, else ``docker-compose`` (v1), else None."""
    if os.environ.get("JOULEBENCH_TEST_COMPOSE"):
        return os.environ["JOULEBENCH_TEST_COMPOSE"].split()
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _project(tmp_path: Path) -> Path:
    """The files `docker compose build` reads, laid out as in a checkout (wheels linked, not copied)."""
    proj = tmp_path / "joulebench"
    proj.mkdir()
    for rel in ("compose.yaml", "compose.gpu.yaml", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / rel, proj / rel)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", proj / "src", ignore=ignore)
    shutil.copytree(REPO / "studies", proj / "studies", ignore=ignore)
    shutil.copytree(REPO / "docker", proj / "docker", ignore=shutil.ignore_patterns("*.crt"),
                    copy_function=_link_or_copy)
    ca = os.environ.get("JOULEBENCH_CA_BUNDLE")
    if ca and Path(ca).is_file():   # the same name `joulebench images build --ca-bundle` gives it
        shutil.copy(ca, proj / "docker" / "certs" / "zz-extra-ca-bundle.crt")
    return proj


def test_compose_file_uses_only_interpolation_that_compose_v1_expands():
    """compose v1 leaves `${A:-${B}}` unexpanded (a literal `${PWD}/studies` volume name): never nest."""
    import re

    for name in ("compose.yaml", "compose.gpu.yaml"):
        text = "\n".join(l for l in (REPO / name).read_text().splitlines() if not l.lstrip().startswith("#"))
        for m in re.finditer(r"(?<!\$)\$\{([^}]*)\}", text):
            assert "$" not in m.group(1), f"{name}: nested interpolation {m.group(0)}"
    gpu = yaml.safe_load((REPO / "compose.gpu.yaml").read_text())["services"]["dispatcher"]
    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["count"] == "all"
    assert gpu["pid"] == "host"   # NVML's PIDs are the host's: the busy gate names our own containers


def test_compose_up_runs_the_quickstart_and_the_records_land_in_the_mounted_folder(tmp_path):
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (scripts/dockerd-setup.sh installs it)")
    client, host = open_engine("docker")
    base = os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")
    if not list((REPO / "docker" / "wheels").glob("torch-2.13.0+cpu-*.whl")):
        client.close()
        pytest.skip("no torch CPU wheel in docker/wheels/ (scripts/fetch-torch-cpu-wheel.sh)")
    if not host.startswith("unix://"):
        client.close()
        pytest.skip(f"the dispatcher container mounts the engine's unix socket; {host} is not one")
    proj = _project(tmp_path)
    home = tmp_path / "home"
    (home / ".cache" / "huggingface" / "hub").mkdir(parents=True)
    (proj / "joulebench-results").mkdir()
    project = f"jbcompose{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "JOULEBENCH_", "STUDY"))}
    env.update(
        PWD=str(proj), HOME=str(home), DOCKER_HOST=host, DOCKER_SOCKET=host[len("unix://"):],
        COMPOSE_PROJECT_NAME=project, BASE_IMAGE=base, DISPATCHER_BASE_IMAGE=base,
        TORCH_SPEC="torch==2.13.0+cpu", TORCH_INDEX_URL="",
        # compose v1 builds through docker-py (the classic builder): no BuildKit plug-in needed
        COMPOSE_DOCKER_CLI_BUILD="0", DOCKER_BUILDKIT="0",
    )

    def run(*args, timeout=1500):
        return subprocess.run([*compose, *args], cwd=proj, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        t0 = time.monotonic()
        build = ["build"]
        if os.environ.get("JOULEBENCH_TEST_COMPOSE_BUILD", "") != "all":
            from joulebench.runners.docker import images

            mp = pytest.MonkeyPatch()
            mp.setenv("DOCKER_HOST", host)
            mp.setenv("JOULEBENCH_BASE_IMAGE", base)
            try:
                images.build_images(["transformers"], client=client)   # tags joulebench-transformers:latest
            finally:
                mp.undo()
            build.append("dispatcher")
        r = run(*build)
        assert r.returncode == 0, f"compose build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        prune_build_leftovers(client)
        t_build = time.monotonic() - t0
        r = run("up", "--no-build")
        t_up = time.monotonic() - t0 - t_build
        out = r.stdout + r.stderr
        print(f"compose ({' '.join(compose)}): build {t_build:.0f} s, up {t_up:.0f} s")
        ids = run("ps", "-a", "-q", "dispatcher").stdout.split() or run("ps", "-q", "dispatcher").stdout.split()
        assert ids, f"no dispatcher container:\n{out[-4000:]}"
        state = client.containers.get(ids[0]).attrs["State"]
        assert r.returncode == 0 and state["ExitCode"] == 0, f"dispatcher exit {state['ExitCode']}:\n{out[-4000:]}"
    finally:
        run("down", "--remove-orphans", timeout=300)
        client.close()

    studies = sorted((proj / "joulebench-results").glob("quickstart-*"))
    assert len(studies) == 1, f"results: {list((proj / 'joulebench-results').iterdir())}\n{out[-4000:]}"
    recs = [json.loads(p.read_text()) for p in sorted((studies[0] / "trials").glob("*.json"))]
    assert len(recs) == 4, f"{len(recs)} records\n{out[-3000:]}"       # batch 1 and 8, 2 repeats each
    assert sorted(r["params"]["batch_size"] for r in recs) == [1, 1, 8, 8]
    for rec in recs:
        assert rec["status"] == "ok", rec.get("error")
        assert rec["output_tokens"] > 0 and rec["duration_s"] > 0
        env_rec = rec["environment"]
        assert env_rec["in_container"] is True                     # measured by the worker in its container
        assert env_rec["image"]["engine"] == "transformers"        # the image's versions file
        assert env_rec["image"]["base_image"] == base
        assert env_rec["image"]["packages"]["torch"] == "2.13.0+cpu"
        assert env_rec["image"]["packages"]["transformers"] == env_rec["libraries"]["transformers"]
    # the dispatcher and the engine containers are gone; nothing of the study is left staged
    assert not any((studies[0] / ".staging").glob("*"))
