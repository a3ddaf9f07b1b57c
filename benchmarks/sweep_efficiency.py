#!/usr/bin/env python3
"""Sweep efficiency (issue 3): share of a study's wall time spent inside measured windows.

Runs the same sweep (>= 4 runtime configurations x 3 repeats on one model)
through ``joulebench.run_study`` twice, with the process runner:

* ``reuse``            load-group reuse (one worker and one model load serve the load group's
                         trials in every round; repeats re-warm on the worker's earlier passes)
* ``one_worker_per_trial``  ``runner_options.one_worker_per_trial: true`` (a worker and a load per trial)

and reports, side by side, ``window_fraction`` = sum of the records' ``duration_s``
(the measured windows) / study wall time, plus where the rest went, read from the
records: model loads (``load_s``), warm-up passes, idle baselines (device idle
once per study, loaded idle once per worker), thermal-gate waits, and the
remainder (worker start: interpreter, torch/transformers imports, CUDA context;
pre-flight, sampler start/stop, record and timeline writes).

    python benchmarks/sweep_efficiency.py                # GPU: synthetic Llama-3.2-1B, bf16
    python benchmarks/sweep_efficiency.py --smoke        # CPU: tiny model, checks the script

Target (issue 3): window_fraction >= 0.60 with reuse on an H100.
Output: benchmarks/results/sweep-efficiency-<gpu>-<date>.json (smoke runs: a temp folder).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def records(study_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*.json"))]


def breakdown(recs: list[dict], wall_s: float, study_dir: Path) -> dict:
    ok = [r for r in recs if r.get("status") == "ok"]
    # the measured (energy) window: a served record's duration_s is its steady state, a part of the window
    # whose counters were read at its edges (whole_window); both are reported
    window = sum(((r.get("whole_window") or {}).get("duration_s") or r.get("duration_s") or 0.0) for r in ok)
    steady = sum(r.get("duration_s") or 0.0 for r in ok if r.get("whole_window"))
    # load_s is repeated on every record of a worker: count it once per worker (one model load);
    # a long-lived worker's loaded idle reference once per measurement of it.
    worker = (lambda r: r.get("worker_id") or r.get("experiment_id"))
    loads = {worker(r): r.get("load_s") or 0.0 for r in ok}
    loaded_idle = {(worker(r), (r.get("baselines") or {}).get("loaded_idle_measured_at")):
                   (r.get("baselines") or {}).get("loaded_idle_duration_s") or 0.0 for r in ok}
    dev_idle = {(r.get("baselines") or {}).get("device_idle_measured_at"):
                (r.get("baselines") or {}).get("device_idle_duration_s") or 0.0 for r in ok}
    warm = sum((r.get("warmup") or {}).get("duration_s") or 0.0 for r in ok)
    thermal = sum((r.get("thermal") or {}).get("waited_s") or 0.0 for r in ok)
    parts = {"measured_windows_s": window, "model_load_s": sum(loads.values()), "warmup_s": warm,
             "loaded_idle_baseline_s": sum(loaded_idle.values()), "device_idle_baseline_s": sum(dev_idle.values()),
             "thermal_wait_s": thermal}
    parts["other_s"] = wall_s - sum(parts.values())
    n_exp = len(list((study_dir / "experiments").glob("*.json")))
    n_workers = len({worker(r) for r in recs})
    return {
        "wall_s": wall_s, "trials_ok": len(ok), "trials_failed": len(recs) - len(ok), "workers": n_workers,
        "experiments": n_exp,
        "rewarm_trials": sum(1 for r in ok if (r.get("warmup") or {}).get("rewarm")),
        "window_fraction": window / wall_s if wall_s > 0 else None,
        "steady_fraction": (steady / wall_s if wall_s > 0 else None) if steady else None,
        "seconds": parts, "fractions": {k: v / wall_s for k, v in parts.items()},
        "other_per_worker_s": parts["other_s"] / n_workers if n_workers else None,
        "other_per_trial_s": parts["other_s"] / len(recs) if recs else None,
        "warmup_passes_mean": (sum((r.get("warmup") or {}).get("passes") or 0 for r in ok) / len(ok)) if ok else None,
        "window_passes_mean": (sum(r.get("passes") or 0 for r in ok) / len(ok)) if ok else None,
        "mean_throughput_tok_s": {r["config_id"]: r.get("throughput_tok_s") for r in ok},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="synthetic:llama-3.2-1b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--output-tokens", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--prompts", type=int, help="prompts per pass (default: the batch size: one batch per pass)")
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-one-worker", type=int,
                    help="repeats of the one_worker_per_trial run (default: --repeats). Its overhead is per trial, so "
                         "fewer repeats estimate the same fraction for less GPU time")
    ap.add_argument("--window-s", type=float, default=10.0, help="min_window_s (joulebench's default: 10)")
    ap.add_argument("--device-idle-s", type=float, default=10.0)
    ap.add_argument("--loaded-idle-s", type=float, default=5.0)
    ap.add_argument("--modes", nargs="+", default=["reuse", "one_worker_per_trial"])
    ap.add_argument("--merge", help="an earlier summary (JSON) of this script whose modes join this run's "
                                    "(modes measured in separate calls on the same machine)")
    ap.add_argument("--work-dir")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that only checks this script works")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.device, args.dtype, args.input_tokens = "synthetic:tiny-llama", "cpu", "float32", 8
        args.batch_sizes, args.output_tokens, args.repeats = [2, 4], [4, 8], 2
        args.window_s, args.device_idle_s, args.loaded_idle_s = 0.5, 0.0, 0.5

    import joulebench
    from joulebench.devices import gpu_environment

    env = gpu_environment()
    gpu = env["gpus"][0]["name"] if env.get("gpus") and args.device != "cpu" else "cpu"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="jb-sweep-eff-"))
    study = {
        "name": "sweep-efficiency", "model": args.model, "backend": "transformers", "device": args.device,
        "engine": {"dtype": args.dtype},
        "workload": {"dataset": "synthetic", "prompts": args.prompts or max(args.batch_sizes),
                     "input_tokens": args.input_tokens, "max_output_tokens": max(args.output_tokens),
                     "force_output_tokens": True},
        # Runtime configurations only (one load group); a pass is one batch unless --prompts says otherwise.
        "experiments": [{"batch_size": bs, "prompts": args.prompts or bs, "max_output_tokens": o}
                        for bs in args.batch_sizes for o in args.output_tokens],
        "repeats": args.repeats, "runner": "process",
        "runner_options": {"busy_wait_s": 30},   # a benchmark never waits long for other users
        "measurement": {"min_window_s": args.window_s, "device_idle_s": args.device_idle_s,
                        "loaded_idle_s": args.loaded_idle_s},
    }
    n_cfg = len(args.batch_sizes) * len(args.output_tokens)
    summary: dict = {"gpu": gpu, "date": dt.date.today().isoformat(),
                     "driver": env.get("driver_version"), "study": study,
                     "design": f"{n_cfg} runtime configurations x {args.repeats} repeats, one model",
                     "metric": "window_fraction = sum(records.duration_s) / study wall time", "modes": {}}
    if args.merge and Path(args.merge).is_file():
        earlier = json.loads(Path(args.merge).read_text())
        for mode, b in earlier.get("modes", {}).items():
            if mode not in args.modes:
                summary["modes"][mode] = {**b, "from": Path(args.merge).name}
    for mode in args.modes:
        s = json.loads(json.dumps(study))
        s["name"] = f"sweep-efficiency-{mode.replace('_', '-')}"
        if mode == "one_worker_per_trial":
            s["runner_options"] = {**s["runner_options"], "one_worker_per_trial": True}
            s["repeats"] = args.repeats_one_worker or args.repeats
        out = work / mode
        t0 = time.perf_counter()
        joulebench.run_study(s, out=out, runner="process", quiet=True, report=False)
        wall = time.perf_counter() - t0
        summary["modes"][mode] = b = breakdown(records(out), wall, out)
        print(f"{mode:<22} wall {wall:7.1f} s  windows {b['seconds']['measured_windows_s']:7.1f} s  "
              f"fraction {b['window_fraction']:.3f}  workers {b['workers']}  "
              + "  ".join(f"{k} {v:.1f}" for k, v in b["seconds"].items() if k != "measured_windows_s"),
              flush=True)
        b["repeats"] = s["repeats"]
        b["trials_planned"] = n_cfg * s["repeats"]
        write(summary, args)
    if {"reuse", "one_worker_per_trial"} <= set(summary["modes"]):
        a, b = summary["modes"]["reuse"], summary["modes"]["one_worker_per_trial"]
        # per trial: the two modes may run different numbers of repeats (--repeats-one-worker)
        per = (lambda m: m["wall_s"] / max(m["trials_ok"] + m["trials_failed"], 1))
        summary["one_worker_vs_reuse_wall_per_trial_ratio"] = per(b) / per(a)
        summary["target_reuse_fraction"] = 0.60
        summary["target_met"] = a["window_fraction"] >= 0.60
    summary["work_dir"] = str(work)
    print("written:", write(summary, args))
    return 0


def write(summary: dict, args) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", summary["gpu"].lower().replace("nvidia", "")).strip("-") or "cpu"
    name = f"sweep-efficiency-{slug}-{summary['date']}{'-smoke' if args.smoke else ''}.json"
    dest = (Path(tempfile.gettempdir()) if args.smoke else Path(args.results_dir)) / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=1, default=str))
    return dest


if __name__ == "__main__":
    sys.exit(main())
