#!/usr/bin/env python3
"""Record NVML traces on a real NVIDIA GPU, for joulebench's replay fixtures.

Standalone on purpose (pynvml + torch only, no joulebench import), so it runs
on a bare GPU machine. A separate *process* polls NVML every ``--poll-ms``
(no CUDA context of its own) while the main process runs these phases:

1. ``idle``         no CUDA context from this script (``--idle-s``)
2. ``loaded_idle``  CUDA context + 8 GiB allocated, no work (``--loaded-s``)
3. ``steady``       back-to-back bf16 8192^3 matmuls (``--steady-s``)
4. ``cooldown``     no work, context held (3 s)
5. ``burst``        0.6 s of matmuls, then 3 s of nothing (``burst_tail``)

Output: one gzip-compressed JSON file (columnar, schema
``joulebench-nvml-trace/1``, read by ``joulebench.testing.fake_nvml``):

    {"schema": "joulebench-nvml-trace/1", "device": {name, uuid, power_limit_mw, ...},
     "phases": [{"name", "start_s", "end_s"}],         # seconds since trace start
     "columns": ["t_s", "energy_mj", "power_mw", "power_instant_mw", "temperature_c",
                 "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_util_pct",
                 "memory_used_bytes", "throttle_reasons", "pstate"],
     "rows": [[...], ...]}                              # one row per poll

Usage: python3 scripts/record_nvml_trace.py --out trace.json.gz [--index 0]
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import time

COLUMNS = ["t_s", "energy_mj", "power_mw", "power_instant_mw", "temperature_c",
           "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_util_pct",
           "memory_used_bytes", "throttle_reasons", "pstate"]


def _field_value(pynvml, handle, field_id):
    try:
        vals = pynvml.nvmlDeviceGetFieldValues(handle, [field_id])
    except Exception:
        return None
    v = vals[0]
    if getattr(v, "nvmlReturn", 0) != 0:
        return None
    vt = v.valueType
    return {0: lambda: v.value.dVal, 1: lambda: v.value.uiVal, 2: lambda: v.value.ulVal,
            3: lambda: v.value.ullVal, 4: lambda: v.value.sllVal, 5: lambda: v.value.siVal,
            6: lambda: v.value.usVal}.get(vt, lambda: None)()


def _safe(fn, *a):
    try:
        return fn(*a)
    except Exception:
        return None


def poller(index, poll_s, t0, stop, conn):
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    fi = getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", 186)
    reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    rows = []
    nxt = time.time()
    while not stop.is_set():
        t = time.time() - t0
        util = _safe(pynvml.nvmlDeviceGetUtilizationRates, h)
        mem = _safe(pynvml.nvmlDeviceGetMemoryInfo, h)
        rows.append([
            round(t, 4),
            _safe(pynvml.nvmlDeviceGetTotalEnergyConsumption, h),
            _safe(pynvml.nvmlDeviceGetPowerUsage, h),
            _field_value(pynvml, h, fi),
            _safe(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
            _safe(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
            _safe(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
            util.gpu if util else None,
            util.memory if util else None,
            int(mem.used) if mem else None,
            _safe(reasons, h),
            _safe(pynvml.nvmlDeviceGetPerformanceState, h),
        ])
        nxt += poll_s
        time.sleep(max(0.0, nxt - time.time()))
    conn.send(rows)
    conn.close()


def device_info(index):
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(index)

    def s(x):
        return x.decode() if isinstance(x, bytes) else x

    info = {
        "index": index,
        "name": s(pynvml.nvmlDeviceGetName(h)),
        "uuid": s(pynvml.nvmlDeviceGetUUID(h)),
        "pci_bus_id": s(_safe(lambda: pynvml.nvmlDeviceGetPciInfo(h).busId)),
        "power_limit_mw": _safe(pynvml.nvmlDeviceGetPowerManagementLimit, h),
        "enforced_power_limit_mw": _safe(pynvml.nvmlDeviceGetEnforcedPowerLimit, h),
        "memory_total_bytes": _safe(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(h).total)),
        "max_sm_clock_mhz": _safe(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "max_mem_clock_mhz": _safe(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "persistence_mode": _safe(pynvml.nvmlDeviceGetPersistenceMode, h),
        "mig_mode": _safe(lambda: pynvml.nvmlDeviceGetMigMode(h)[0]),
        "ecc_mode": _safe(lambda: pynvml.nvmlDeviceGetEccMode(h)[0]),
        "driver_version": s(_safe(pynvml.nvmlSystemGetDriverVersion)),
        "nvml_version": s(_safe(pynvml.nvmlSystemGetNVMLVersion)),
        "cuda_driver_version": _safe(pynvml.nvmlSystemGetCudaDriverVersion),
    }
    pynvml.nvmlShutdown()
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--index", type=int, default=0, help="NVML index of the GPU to record")
    ap.add_argument("--poll-ms", type=float, default=15.0)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--loaded-s", type=float, default=10.0)
    ap.add_argument("--steady-s", type=float, default=20.0)
    ap.add_argument("--burst-s", type=float, default=0.6)
    args = ap.parse_args()

    info = device_info(args.index)
    print("device:", json.dumps(info), flush=True)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    parent, child = ctx.Pipe(duplex=False)
    t0 = time.time()
    proc = ctx.Process(target=poller, args=(args.index, args.poll_ms / 1000.0, t0, stop, child), daemon=True)
    proc.start()
    phases = []

    def phase(name, fn):
        start = time.time() - t0
        fn()
        phases.append({"name": name, "start_s": round(start, 4), "end_s": round(time.time() - t0, 4)})
        print(f"phase {name}: {phases[-1]}", flush=True)

    time.sleep(1.0)  # poller warm
    phase("idle", lambda: time.sleep(args.idle_s))

    import torch  # imported after the idle phase: no context during idle

    # Map the NVML index to a CUDA ordinal by UUID (best effort: same order when nothing is hidden).
    dev = torch.device("cuda", 0 if os.environ.get("CUDA_VISIBLE_DEVICES") else args.index)
    holder = {}

    def loaded():
        holder["ballast"] = torch.empty(8 << 30, dtype=torch.uint8, device=dev)
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        holder["a"], holder["b"] = a, b
        torch.cuda.synchronize(dev)
        time.sleep(args.loaded_s)

    phase("loaded_idle", loaded)

    def load_for(seconds):
        a, b = holder["a"], holder["b"]
        torch.cuda.synchronize(dev)
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            a @ b
            n += 1
            if n % 4 == 0:
                torch.cuda.synchronize(dev)
        torch.cuda.synchronize(dev)
        holder.setdefault("matmuls", []).append(n)

    phase("steady", lambda: load_for(args.steady_s))
    phase("cooldown", lambda: time.sleep(3.0))
    phase("burst", lambda: load_for(args.burst_s))
    phase("burst_tail", lambda: time.sleep(3.0))
    stop.set()
    rows = parent.recv()
    proc.join(10)
    doc = {"schema": "joulebench-nvml-trace/1", "recorded_at": t0, "poll_ms": args.poll_ms,
           "device": info, "phases": phases, "matmuls": holder.get("matmuls"),
           "matmul_shape": [8192, 8192, 8192], "columns": COLUMNS, "rows": rows}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    with gzip.open(args.out, "wb", compresslevel=9) as f:
        f.write(raw)
    # quick summary: counter energy vs integral of polled power per phase
    for p in phases:
        sel = [r for r in rows if p["start_s"] <= r[0] <= p["end_s"]]
        if len(sel) > 2 and sel[0][1] is not None:
            e = (sel[-1][1] - sel[0][1]) / 1000.0
            integ = sum((sel[i + 1][0] - sel[i][0]) * (sel[i][2] or 0) / 1000.0 for i in range(len(sel) - 1))
            print(f"{p['name']}: rows={len(sel)} counter={e:.1f} J power-integral={integ:.1f} J", flush=True)
    print(f"rows={len(rows)} bytes_raw={len(raw)} out={args.out} size={os.path.getsize(args.out)}")


if __name__ == "__main__":
    main()
