#!/usr/bin/env python3
"""Overhead of joulebench's meters on a host-bound (GIL-heavy) loop, meters on vs off.

Host-bound generation loops are where a sampler thread in the inference
process hurts: it competes for the GIL. joulebench's sampler is a separate
process. This benchmark runs a pure-Python loop (a stand-in for an eager
``generate`` launch loop) in windows of ``--window-s`` seconds, interleaving:

* ``off``     no meter at all
* ``joulebench``  EnergyWindow (counters at the edges) + the sampler process at 10 Hz
* ``thread``  the same device polling done by a thread inside this process (what we avoid)

and prints loop throughput per mode with the ratio to ``off``. Without a GPU
it meters two fake GPUs (JOULEBENCH_FAKE_NVML, real NVML code path above the
fake); with ``--real`` it meters the real GPUs. The fake's readings are pure
Python, so the ``thread`` penalty it shows is larger than with real pynvml
(whose ctypes calls release the GIL); the ``joulebench`` ratio is what to check
(target: within 1 % of ``off``).

    python benchmarks/meter_overhead.py [--repeats 5] [--window-s 3] [--real] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def loop_for(seconds: float) -> float:
    """Iterations per second of a small pure-Python body (GIL-bound)."""
    end = time.perf_counter() + seconds
    n = 0
    x = 0
    t0 = time.perf_counter()
    while True:
        for i in range(200):
            x = (x * 31 + i) & 0xFFFF
        n += 200
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--real", action="store_true", help="meter the real GPUs (no fake NVML)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    if not args.real:
        tmp = Path(tempfile.mkdtemp(prefix="jb-overhead-"))
        spec = tmp / "fake_nvml.json"
        spec.write_text(json.dumps({"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300},
                                             {"uuid": "GPU-bbbbbbbb-0000-0000-0000-000000000000", "power_w": 300}]}))
        os.environ["JOULEBENCH_FAKE_NVML"] = str(spec)

    from joulebench.devices import resolve_gpus
    from joulebench.meters import EnergyWindow, Sampler
    from joulebench.testing import install_from_environment

    install_from_environment()          # the fake above (the sampler's process installs it too)

    gpus = resolve_gpus(None)
    if not gpus:
        print("no GPUs (real or fake) to meter", file=sys.stderr)
        return 1

    def run_off():
        return loop_for(args.window_s)

    def run_joulebench():
        with Sampler([g.info.uuid for g in gpus], hz=args.hz, cpu=True) as s:
            with EnergyWindow(gpus):
                r = loop_for(args.window_s)
        s.stop()
        return r

    def run_thread():
        stop = threading.Event()
        rows = []

        def poll():
            while not stop.wait(1.0 / args.hz):
                for g in gpus:
                    rows.append(g.sample())

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        with EnergyWindow(gpus):
            r = loop_for(args.window_s)
        stop.set()
        t.join()
        return r

    modes = {"off": run_off, "joulebench": run_joulebench, "thread": run_thread}
    results: dict[str, list[float]] = {m: [] for m in modes}
    loop_for(0.5)  # warm
    for rep in range(args.repeats):
        order = list(modes) if rep % 2 == 0 else list(reversed(modes))
        for m in order:
            results[m].append(modes[m]())
    base = statistics.mean(results["off"])
    summary = {"gpus": [g.info.name for g in gpus], "fake_nvml": not args.real, "window_s": args.window_s,
               "repeats": args.repeats, "hz": args.hz, "cpu_count": os.cpu_count(), "modes": {}}
    print(f"{'mode':<12}{'loop it/s (mean)':>18}{'CV':>8}{'ratio to off':>14}")
    for m, vals in results.items():
        mean = statistics.mean(vals)
        cv = statistics.stdev(vals) / mean if len(vals) > 1 else float("nan")
        summary["modes"][m] = {"mean_it_s": mean, "cv": cv, "ratio_to_off": mean / base, "values": vals}
        print(f"{m:<12}{mean:>18.4g}{cv:>8.3f}{mean / base:>14.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
