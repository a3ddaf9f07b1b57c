"""`joulebench doctor`: honest on a machine without GPU, precise where the checks fail.

GPU hosts are stood in for by the trace-backed NVML fake (joulebench.testing.fake_nvml) at the
hardware boundary; the in-container probe runs for real in the engine image when an engine is
here, where it shows what a host without the NVIDIA container toolkit shows: no GPU inside.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from joulebench.cli import doctor
from joulebench.cli.doctor import Check, exit_code

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "tests" / "fixtures" / "nvml" / "h100_trace.json.gz"


def _by_name(checks):
    return {c.name: c for c in checks}


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    """Two H100s replaying the recorded trace; one runs a foreign process."""
    spec = {"driver_version": "580.159.04", "cuda_driver_version": 13000,
            "gpus": [{"name": "NVIDIA H100 80GB HBM3", "trace": str(TRACE),
                      "processes": [{"pid": 4242, "used_memory_bytes": 1 << 30}]},
                     {"name": "NVIDIA H100 80GB HBM3", "trace": str(TRACE)}]}
    path = tmp_path / "fake_nvml.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(path))
    return spec


def test_no_engine_and_no_gpu_are_reported_with_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    monkeypatch.delenv("JOULEBENCH_FAKE_NVML", raising=False)
    import joulebench.devices.nvml as nvml_mod

    if nvml_mod.load_nvml() is not None and "error" not in doctor.host_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    checks = doctor.run_checks()
    c = _by_name(checks)
    assert c["container engine"].ok is False and c["container engine"].required
    assert "nothing answers" in c["container engine"].detail
    assert "podman-setup.sh" in c["container engine"].fix
    assert c["host GPUs"].ok is False and c["host GPUs"].required is False
    assert "no NVIDIA GPU on this host" in c["host GPUs"].detail
    for name in ("GPU inside a container", "driver / CUDA compatibility", "GPUs free"):
        assert c[name].ok is False and c[name].status == "warn" and "not run" in c[name].detail
    assert exit_code(checks) == 1                          # the engine is required
    assert exit_code([x for x in checks if x.name != "container engine"]) == 0   # GPU checks only warn


def test_gpu_host_busy_gpu_is_flagged(fake_gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    c = _by_name(doctor.run_checks())
    assert c["host GPUs"].ok and "2 x NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA driver 13.0" in c["host GPUs"].detail
    assert c["GPUs free"].ok is False and "pids [4242]" in c["GPUs free"].detail
    assert "runner_options.gpus" in c["GPUs free"].fix
    assert c["GPU inside a container"].ok is False and c["GPU inside a container"].detail == "no container engine"


def test_check_status_and_exit_code():
    assert Check("a", True, "").status == "ok"
    assert Check("a", False, "", required=False).status == "warn"
    assert Check("a", False, "").status == "FAIL"
    assert exit_code([Check("a", True, ""), Check("b", False, "", required=False)]) == 0
    assert exit_code([Check("a", False, "")]) == 1


def test_cli_doctor_json(tmp_path):
    from .conftest import run_cli

    r = run_cli("doctor", "--json", env={"DOCKER_HOST": f"unix://{tmp_path / 'x.sock'}", "JOULEBENCH_FAKE_NVML": ""})
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} >= {"container engine", "host GPUs", "GPU inside a container",
                                             "driver / CUDA compatibility", "GPUs free"}
    assert r.returncode == 1 and all({"ok", "detail", "fix", "status"} <= set(row) for row in rows)


@pytest.mark.containers
@pytest.mark.slow
def test_probe_in_the_real_image_finds_no_gpu_without_the_toolkit(fake_gpus, monkeypatch):
    """The probe container really runs (with the NVIDIA device request); here nothing provides the GPUs."""
    from joulebench.runners.docker import images
    from joulebench.runners.docker.client import connect, engine_available

    host = os.environ.get("JOULEBENCH_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    if host:
        monkeypatch.setenv("DOCKER_HOST", host)
    if not engine_available(timeout_s=2):
        pytest.skip("no container engine answers")
    monkeypatch.setenv("JOULEBENCH_BASE_IMAGE", os.environ.get("JOULEBENCH_BASE_IMAGE",
                                                               "localhost/joulebench-base:bookworm"))
    client = connect()
    images.build_images(["transformers"], client=client)   # a no-op when current (the integration tests build it)
    c = _by_name(doctor.run_checks(client=client, gpu_passthrough="device-request"))   # the runner's old request
    assert c["image transformers"].ok
    probe = c["GPU inside a container"]
    assert probe.ok is False and "saw 0 of 2 GPU(s)" in probe.detail
    assert "device-nodes" in probe.fix or "nvidia-container-toolkit" in probe.fix
    assert c["driver / CUDA compatibility"].ok is False
    assert "CPU build" in c["driver / CUDA compatibility"].detail


def test_gpu_only_images_are_a_warning_that_says_where_to_build_them(monkeypatch):
    from joulebench.runners.docker.client import connect, engine_available

    host = os.environ.get("JOULEBENCH_TEST_DOCKER_HOST") or os.environ.get("DOCKER_HOST")
    if host:
        monkeypatch.setenv("DOCKER_HOST", host)
    if not engine_available(timeout_s=2):
        pytest.skip("no container engine answers")
    checks = _by_name(doctor.check_images(connect()))
    for engine in ("sglang", "trtllm"):
        c = checks[f"image {engine}"]
        if not c.ok:      # nobody builds these on a CPU host, but a GPU host may have them
            assert c.status == "warn" and "GPU-only image" in c.detail and "--gpu" in c.fix
