"""GPU tier for the shared-box checks: real NVML, a real foreign CUDA process (``pytest -m gpu``).

The foreign process opens a CUDA context through the driver API (``libcuda``, no torch needed)
and holds 1 GiB, as another user's job would. NVML must list it, the busy-GPU gate must wait
for it and let the experiment go once it is gone, and the lock key must be the GPU's UUID.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from joulebench.study.locks import BusyGpuGate, DeviceLock, GpuBusy, gpu_usage

pytestmark = pytest.mark.gpu

FOREIGN = r"""
import ctypes, time
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0
dev = ctypes.c_int()
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
ctx = ctypes.c_void_p()
assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
ptr = ctypes.c_uint64()
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), 1 << 30) == 0
print("holding", flush=True)
time.sleep(600)
"""


def _gpus():
    if os.environ.get("JOULEBENCH_FAKE_NVML"):
        pytest.skip("fake NVML set")
    from joulebench.devices import resolve_gpus

    try:
        gpus = resolve_gpus([0], cuda_visible_devices=None)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no NVIDIA GPU: {e}")
    return gpus


@pytest.fixture
def gpus():
    return _gpus()


@pytest.fixture
def foreign_cuda(gpus):
    p = subprocess.Popen([sys.executable, "-c", FOREIGN], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "holding"
    yield p
    p.kill()
    p.wait()


def test_real_foreign_cuda_process_is_seen_waited_for_and_released(gpus, foreign_cuda):
    for _ in range(50):          # NVML lists a new context within a moment
        busy = gpu_usage(gpus)
        if busy:
            break
        time.sleep(0.1)
    assert [p["pid"] for p in busy[0]["processes"]] == [foreign_cuda.pid]
    assert busy[0]["processes"][0]["used_memory_bytes"] >= 1 << 30
    assert BusyGpuGate("stop").check(gpus).action == "stop"

    def leave():
        time.sleep(2.0)
        foreign_cuda.kill()
        foreign_cuda.wait()

    threading.Thread(target=leave, daemon=True).start()
    lines = []
    d = BusyGpuGate("wait", wait_s=60, poll_s=0.25, log=lines.append).check(gpus)
    assert d.action == "run" and d.note["action"] == "waited"
    assert 1.5 <= d.note["waited_s"] < 30
    assert gpu_usage(gpus) == []
    print("\n".join(lines))


def test_lock_key_is_the_gpu_uuid(tmp_path, gpus):
    uuid = gpus[0].info.uuid
    from joulebench.study.locks import study_device_keys

    assert study_device_keys([{"device": "cuda:0"}]) == [uuid]
    with DeviceLock([uuid], study="a", directory=tmp_path, policy="fail"):
        with pytest.raises(GpuBusy, match=uuid):
            DeviceLock([uuid], study="b", directory=tmp_path, policy="fail").acquire()
