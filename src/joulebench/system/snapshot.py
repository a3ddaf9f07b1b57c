"""A snapshot of the environment a trial ran in: hardware, OS, library versions."""
from __future__ import annotations

import os
import platform
import socket
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

from joulebench import __version__

LIBRARIES = ("torch", "transformers", "vllm", "llama_cpp_python", "accelerate", "nvidia-ml-py", "pydantic",
             "numpy", "ray")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def collect_environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "joulebench_version": __version__,
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "libraries": library_versions(),
        "in_container": os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    torch = sys.modules.get("torch")  # only where the engine already imported it
    if torch is not None:
        env["torch_cuda"] = torch.version.cuda
        env["torch_cuda_available"] = torch.cuda.is_available()
    try:
        from joulebench.devices import gpu_environment

        env["gpu"] = gpu_environment()
    except Exception as e:  # noqa: BLE001 - the snapshot never fails a trial
        env["gpu"] = {"error": str(e)}
    return env
