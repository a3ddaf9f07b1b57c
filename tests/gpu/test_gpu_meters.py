"""The measurement core on a real NVIDIA GPU (H100/H200): real counters, baselines, sampler.

Run on a GPU machine: ``pytest -m gpu tests/gpu -v``. Each test prints the
figures it checked, so the log is the record (benchmarks/results/ for the card).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from joulebench.devices import gpu_environment, resolve_gpus
from joulebench.meters import (EnergyWindow, Flag, Sampler, baseline_drifted, measure_idle_power, power_integral_j,
                               preflight, window_flags)

pytestmark = pytest.mark.gpu


def test_environment_snapshot():
    env = gpu_environment()
    print(json.dumps(env, indent=1))
    assert env["driver_version"] and env["nvml_version"] and env["cuda_driver_version"]
    assert env["gpus"] and all(g["uuid"].startswith("GPU-") for g in env["gpus"])
    assert all(g["power_limit_w"] and g["power_limit_w"] > 50 for g in env["gpus"])


def test_cuda_ordinals_map_to_the_same_uuid_as_torch(torch_cuda):
    gpus = resolve_gpus(cuda_visible_devices=None)
    last = gpus[-1]
    code = ("import torch, json; from joulebench.devices import resolve_gpus;"
            "print(json.dumps([str(torch.cuda.get_device_properties(0).uuid), resolve_gpus([0])[0].info.uuid]))")
    for cvd in (str(last.info.index), last.info.uuid, last.info.uuid[:12]):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": cvd},
                             capture_output=True, text=True, check=True).stdout
        torch_uuid, ours = json.loads(out.strip().splitlines()[-1])
        print(cvd, torch_uuid, ours)
        assert ours.lower().removeprefix("gpu-") == torch_uuid.lower().removeprefix("gpu-")
        assert ours == last.info.uuid


def test_counter_updates_about_every_100_ms():
    (gpu,) = resolve_gpus([0])
    changes, last = [], gpu.energy_counter_j()
    assert last is not None, "this GPU has no energy counter (pre-Volta?)"
    end = time.perf_counter() + 3.0
    while time.perf_counter() < end:
        e = gpu.energy_counter_j()
        if e != last:
            changes.append(time.perf_counter())
            last = e
        time.sleep(0.002)
    periods = np.diff(changes)
    print(f"counter period: median {np.median(periods) * 1000:.1f} ms, n={len(periods)}")
    assert 0.02 <= np.median(periods) <= 0.25


def test_idle_baseline_and_recheck():
    gpus = resolve_gpus([0])
    ref = measure_idle_power(gpus, 5.0)
    again = measure_idle_power(gpus, 3.0)
    print(f"idle {ref.power_w:.1f} W, recheck {again.power_w:.1f} W, pstates {ref.pstates}, temps {ref.temperatures_c}")
    assert 20 < ref.power_w < 250
    assert ref.source == "nvml-counter"
    assert not baseline_drifted(ref, again, threshold_rel=0.25)


def test_window_under_load_with_sampler(matmul_load, torch_cuda):
    torch = torch_cuda
    gpus = resolve_gpus([0])
    idle = measure_idle_power(gpus, 3.0)
    with Sampler([g.info.uuid for g in gpus], hz=10.0, cpu=False) as s:
        with EnergyWindow(gpus, sync=lambda: torch.cuda.synchronize(0)) as w:
            n = matmul_load(12.0)
    tl = s.stop()
    r = w.result
    inst = power_integral_j(tl[tl.device_uuid == gpus[0].info.uuid], r.start_time_s, r.end_time_s,
                            column="power_instant_w")
    flags = window_flags(r, tl, device_idle=idle)
    print(f"{n} matmuls, {r.duration_s:.2f} s, {r.energy_j:.0f} J, {r.mean_power_w:.0f} W "
          f"(idle {idle.power_w:.0f} W), instant-power integral {inst}, flags {[str(f) for f in flags]}")
    assert r.energy_source == "nvml-counter"
    assert r.mean_power_w > idle.power_w * 2
    assert r.mean_power_w < 1.1 * gpus[0].info.power_limit_w
    assert 100 <= len(tl) <= 160
    assert Flag.SAMPLER_GAPS not in [f.flag for f in flags]
    assert Flag.POWER_OUT_OF_RANGE not in [f.flag for f in flags]
    if inst is not None:
        assert abs(inst - r.energy_j) / r.energy_j < 0.05


def test_window_power_repeats_within_one_percent(matmul_load, torch_cuda):
    """The meter's own precision: identical 10 s GPU-bound windows, mean power CV <= 1 %."""
    torch = torch_cuda
    gpus = resolve_gpus([0])
    matmul_load(3.0)   # warm
    powers = []
    for _ in range(4):
        with EnergyWindow(gpus, sync=lambda: torch.cuda.synchronize(0)) as w:
            matmul_load(10.0)
        powers.append(w.result.mean_power_w)
    cv = float(np.std(powers, ddof=1) / np.mean(powers))
    print(f"window power {['%.1f' % p for p in powers]} W, CV {cv:.4f}")
    assert cv <= 0.01


def test_short_window_is_flagged_and_polled_power_undercounts(matmul_load, torch_cuda):
    torch = torch_cuda
    gpus = resolve_gpus([0])
    time.sleep(3.0)   # let the 1 s power average settle at a low level
    with Sampler([gpus[0].info.uuid], hz=10.0, cpu=False) as s:
        with EnergyWindow(gpus, sync=lambda: torch.cuda.synchronize(0)) as w:
            matmul_load(0.6)
    tl = s.stop()
    r = w.result
    polled = power_integral_j(tl, r.start_time_s, r.end_time_s, column="power_w")
    print(f"burst {r.duration_s:.2f} s: counter {r.energy_j:.0f} J, polled 1 s-average power {polled}")
    assert Flag.SHORT_WINDOW in [f.flag for f in window_flags(r, tl)]
    if polled is not None:
        assert polled < r.energy_j


def test_preflight_on_this_gpu():
    gpus = resolve_gpus([0])
    rep = preflight(gpus, allow_foreign=True, own_pids={os.getpid()})
    print(json.dumps(rep, indent=1))
    st = rep["devices"][0]
    assert st["uuid"] == gpus[0].info.uuid and st["pstate"] is not None and st["max_sm_clock_mhz"]


def test_measure_api(matmul_load, torch_cuda):
    import joulebench

    matmul_load(0.1)
    with joulebench.measure(devices=[0], loaded_idle_s=2.0, cpu=False) as m:
        matmul_load(3.0)
    r = m.result
    print(json.dumps(r.to_dict(), indent=1, default=str))
    assert r.energy_j > 0 and r.energy_above_loaded_idle_j < r.energy_j
    assert r.loaded_idle.power_w > 20


def test_multi_gpu_meters_only_the_busy_gpu(matmul_load, torch_cuda):
    torch = torch_cuda
    gpus = resolve_gpus(cuda_visible_devices=None)
    if len(gpus) < 2 or torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    pair = resolve_gpus([0, 1])
    with EnergyWindow(pair, sync=lambda: torch.cuda.synchronize(1)) as w:
        matmul_load(10.0, device=1)
    r = w.result
    e0, e1 = (d.energy_j for d in r.devices)
    print(f"GPU0 (idle) {e0:.0f} J, GPU1 (busy) {e1:.0f} J, total {r.energy_j:.0f} J")
    assert r.energy_j == pytest.approx(e0 + e1)
    assert e1 > 2 * e0
