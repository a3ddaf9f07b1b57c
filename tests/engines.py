"""The container engines the ``containers`` tests run against: Podman and Docker, both through the Docker API.

Users run both, and they differ exactly where it matters (device requests, CDI, image names, error
messages), so the container tests take the engine as a parameter (ids ``podman`` and ``docker``).
Where each engine answers:

- ``JOULEBENCH_TEST_DOCKER_HOST_PODMAN`` / ``JOULEBENCH_TEST_DOCKER_HOST_DOCKER``: one socket per
  engine (``.ci/run`` sets both: scripts/podman-setup.sh and scripts/dockerd-setup.sh);
- otherwise ``JOULEBENCH_TEST_DOCKER_HOST`` or ``DOCKER_HOST``: one engine, whichever answers there
  (told apart by its version information).

An engine that is not configured or does not answer is skipped cleanly. CI time: the whole set runs
on the engine named by ``JOULEBENCH_TEST_FULL_ENGINE`` (default ``docker``; ``all`` runs everything
on both); on the other only the tests marked ``every_engine`` run (create request and inspect, a tiny
study through the docker runner, an image build, clean-up). Where only one engine answers, it runs
the whole set.
"""
from __future__ import annotations

import os
from functools import lru_cache

import pytest

ENGINES = ("podman", "docker")
BASE_IMAGE = os.environ.get("JOULEBENCH_BASE_IMAGE", "localhost/joulebench-base:bookworm")


def engine_kind(client) -> str:
    """``podman`` or ``docker``, from the API's version information."""
    info = client.version()
    names = " ".join(str(c.get("Name", "")) for c in info.get("Components") or [])
    return "podman" if "podman" in names.lower() or "podman" in str(info.get("Platform", "")).lower() else "docker"


def full_engine() -> str:
    return os.environ.get("JOULEBENCH_TEST_FULL_ENGINE", "docker").strip().lower()


def configured_host(kind: str) -> str | None:
    """The socket given for this engine, or None (then the default host is tried and classified)."""
    return os.environ.get(f"JOULEBENCH_TEST_DOCKER_HOST_{kind.upper()}") or None


def default_host() -> str | None:
    return os.environ.get("JOULEBENCH_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or None


def open_engine(kind: str, *, base_image: str | None = BASE_IMAGE):
    """(client, host) for the engine ``kind``, or ``pytest.skip`` with the reason and the fix.

    The caller sets ``DOCKER_HOST`` to ``host`` for the code under test (which connects by itself).
    """
    from joulebench.runners.docker.client import connect, engine_available

    explicit = configured_host(kind)
    host = explicit or default_host()
    if host is None and not any(configured_host(k) for k in ENGINES):
        host = "unix:///var/run/docker.sock"
    if host is None:
        pytest.skip(f"no {kind} engine configured (JOULEBENCH_TEST_DOCKER_HOST_{kind.upper()})")
    mp = pytest.MonkeyPatch()
    mp.setenv("DOCKER_HOST", host)
    try:
        if not engine_available(timeout_s=2):
            setup = "scripts/podman-setup.sh" if kind == "podman" else "scripts/dockerd-setup.sh"
            pytest.skip(f"no {kind} engine answers at {host} (run {setup} and export its DOCKER_HOST)")
        client = connect()
        actual = engine_kind(client)
        if actual != kind:
            client.close()
            if explicit:   # a socket named for one engine that serves the other: a set-up mistake
                pytest.fail(f"JOULEBENCH_TEST_DOCKER_HOST_{kind.upper()}={host} is served by {actual}, not {kind}")
            pytest.skip(f"the engine at {host} is {actual}, not {kind}")
        if base_image:
            try:
                client.images.get(base_image)
            except Exception:
                client.close()
                pytest.skip(f"base image {base_image} missing on {kind} (its set-up script imports it)")
    finally:
        mp.undo()
    return client, host


@lru_cache(maxsize=None)
def answers(kind: str) -> bool:
    """Whether the engine ``kind`` is configured and answers (probed once per session)."""
    try:
        client, _ = open_engine(kind, base_image=None)
    except (pytest.skip.Exception, pytest.fail.Exception):
        return False
    client.close()
    return True


def skip_unless_selected(kind: str, item) -> None:
    """On the engine that does not run the full set, only ``every_engine`` tests run.

    Where the full-set engine does not answer (a machine with only Podman, say), the one that does
    runs everything."""
    full = full_engine()
    if full in ("all", "both", kind) or item.get_closest_marker("every_engine"):
        return
    if full not in ENGINES or not answers(full):
        return
    pytest.skip(f"runs on {full} only (JOULEBENCH_TEST_FULL_ENGINE=all runs it on {kind} too)")


def prune_build_leftovers(client) -> int:
    """Where ``JOULEBENCH_TEST_PRUNE_BUILD_CACHE=1`` (``.ci/run``: CI's disk is small and shared), drop the
    untagged images an image build leaves behind (the build stage's layers, a few GB per engine image)
    right after the build; bytes reclaimed. Elsewhere a no-op: on a developer's engine those layers are
    the cache that makes the next build after a source change take seconds, not minutes."""
    if os.environ.get("JOULEBENCH_TEST_PRUNE_BUILD_CACHE", "") != "1":
        return 0
    freed = 0
    for _ in range(4):   # an engine that prunes one level of a chain per call frees the next level next time
        try:
            r = client.images.prune(filters={"dangling": True})
        except Exception as exc:   # noqa: BLE001 - a reclaim failure must not fail the test that built
            print(f"pruning the build's leftovers failed: {exc}")
            break
        freed += int(r.get("SpaceReclaimed") or 0)
        if not r.get("ImagesDeleted"):
            break
    print(f"pruned the build's untagged images: {freed / 1e9:.2f} GB reclaimed")
    return freed
