"""GPU tier: real NVML on a real NVIDIA GPU. Run with ``pytest -m gpu tests/gpu``."""
from __future__ import annotations

import os

import pytest


def _have_gpu() -> bool:
    if os.environ.get("JOULEBENCH_FAKE_NVML"):
        return False
    try:
        from joulebench.devices import resolve_gpus

        return bool(resolve_gpus(cuda_visible_devices=None))
    except Exception:
        return False


HAVE_GPU = _have_gpu()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="no NVIDIA GPU with NVML here")
    for item in items:
        if "gpu" in item.keywords and not HAVE_GPU:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


@pytest.fixture(scope="session")
def matmul_load(torch_cuda):
    """``load(seconds, device=0)``: back-to-back bf16 8192^3 matmuls, synchronised."""
    torch = torch_cuda
    cache = {}

    def load(seconds: float, device: int = 0) -> int:
        if device not in cache:
            cache[device] = [torch.randn(8192, 8192, device=f"cuda:{device}", dtype=torch.bfloat16) for _ in range(2)]
        a, b = cache[device]
        import time

        torch.cuda.synchronize(device)
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            a @ b
            n += 1
            if n % 4 == 0:
                torch.cuda.synchronize(device)
        torch.cuda.synchronize(device)
        return n

    return load
