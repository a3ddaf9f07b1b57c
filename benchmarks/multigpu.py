#!/usr/bin/env python3
"""Multi-GPU energy (issue 8): one model split over two GPUs vs the same model on one GPU.

1. A study with ``device: cuda:0,1`` (the transformers backend spreads the
   synthetic model's layers over both GPUs with accelerate), repeated.
2. The same study with ``device: cuda:0``, repeated.
3. ``joulebench.measure(devices=[0])`` around work on GPU 0 while GPU 1 is
   visible: GPU 1 must come back under ``unused_devices``, never in the total.

Checks, per trial: the per-device GPU energies sum to the record's ``energy_j``;
the split trials meter both GPUs (each above its idle draw), the one-GPU trials
meter GPU 0 only. Prints the figures and writes
benchmarks/results/multigpu-<gpu>-<date>.json (``--out`` to override).

    python benchmarks/multigpu.py                     # needs 2 GPUs
    python benchmarks/multigpu.py --model synthetic:llama-3.1-8b --repeats 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trial_rows(study_dir: Path) -> list[dict]:
    rows = []
    for p in sorted((study_dir / "trials").glob("*.json")):
        r = json.loads(p.read_text())
        gpus = [d for d in r.get("devices", []) if d.get("kind", "gpu") == "gpu"]
        per = {f"gpu{d['index']}": d.get("energy_j") for d in gpus}
        s = sum(v for v in per.values() if v is not None) if gpus else None
        rows.append({
            "trial_id": r["trial_id"], "status": r["status"], "error": r.get("error"),
            "device": r["params"].get("device"), "energy_j": r.get("energy_j"), "energy_source": r.get("energy_source"),
            "per_device_energy_j": per, "sum_per_device_j": s,
            "sum_matches_total": (s is not None and r.get("energy_j") is not None
                                  and abs(s - r["energy_j"]) <= 1e-6 * max(1.0, abs(r["energy_j"]))),
            "per_device_mean_power_w": {f"gpu{d['index']}": d.get("mean_power_w") for d in gpus},
            "per_device_loaded_idle_w": {f"gpu{d['index']}": d.get("loaded_idle_w") for d in gpus},
            "per_device_share": ({k: v / r["energy_j"] for k, v in per.items() if v is not None}
                                 if r.get("energy_j") else None),
            "metered_uuids": [d.get("uuid") for d in gpus],
            "duration_s": r.get("duration_s"), "output_tokens": r.get("output_tokens"),
            "throughput_tok_s": r.get("throughput_tok_s"),
            "energy_per_output_token_j": r.get("energy_per_output_token_j"),
            "energy_above_loaded_idle_per_output_token_j": r.get("energy_above_loaded_idle_per_output_token_j"),
            "flags": sorted({f["code"] for f in r.get("flags", [])}),
        })
    return rows


def mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="synthetic:llama-3.2-1b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window-s", type=float, default=5.0)
    ap.add_argument("--work-dir")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/multigpu-<gpu>-<date>.json)")
    args = ap.parse_args()

    import joulebench
    from joulebench.devices import gpu_environment, resolve_gpus

    env = gpu_environment()
    gpus = resolve_gpus(None)
    if len(gpus) < 2:
        print(f"needs two visible GPUs, found {len(gpus)}", file=sys.stderr)
        return 1
    name = gpus[0].info.name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="jb-multigpu-"))
    base = {
        "model": args.model, "backend": "transformers", "engine": {"dtype": args.dtype, "batch_size": args.batch_size},
        "workload": {"dataset": "synthetic", "prompts": args.prompts, "input_tokens": args.input_tokens,
                     "max_output_tokens": args.output_tokens, "force_output_tokens": True},
        "repeats": args.repeats, "runner": "process",
        "measurement": {"min_window_s": args.window_s, "device_idle_s": 5, "loaded_idle_s": 3,
                        "warmup": {"cv_target": 0.05, "k": 2, "min_passes": 1, "max_passes": 5}},
    }
    summary: dict = {"gpu": name, "gpus": [{"index": g.info.index, "uuid": g.info.uuid, "name": g.info.name}
                                           for g in gpus],
                     "driver": env.get("driver_version"), "date": dt.date.today().isoformat(),
                     "settings": vars(args), "studies": {}, "checks": {}}
    for label, device in (("split_cuda0_1", "cuda:0,1"), ("single_cuda0", "cuda:0")):
        t0 = time.perf_counter()
        joulebench.run_study({**base, "name": f"multigpu-{label.replace('_', '-')}", "device": device},
                             out=work / label, runner="process", quiet=True, report=False)
        rows = trial_rows(work / label)
        ok = [r for r in rows if r["status"] == "ok"]
        keys = sorted({k for r in ok for k in r["per_device_energy_j"]})
        summary["studies"][label] = {
            "device": device, "wall_s": time.perf_counter() - t0, "trials": rows, "trials_ok": len(ok),
            "mean_energy_j": mean(r["energy_j"] for r in ok),
            "mean_per_device_energy_j": {k: mean(r["per_device_energy_j"].get(k) for r in ok) for k in keys},
            "mean_per_device_share": {k: mean((r["per_device_share"] or {}).get(k) for r in ok) for k in keys},
            "mean_energy_per_output_token_j": mean(r["energy_per_output_token_j"] for r in ok),
            "mean_throughput_tok_s": mean(r["throughput_tok_s"] for r in ok),
        }
        st = summary["studies"][label]
        print(f"{label}: {len(ok)}/{len(rows)} ok, mean energy {st['mean_energy_j']} J, per device "
              f"{st['mean_per_device_energy_j']}, shares {st['mean_per_device_share']}, "
              f"J/tok {st['mean_energy_per_output_token_j']}, tok/s {st['mean_throughput_tok_s']}", flush=True)
        write(summary, args, slug)   # kept if a later part is cut short

    split = [r for r in summary["studies"]["split_cuda0_1"]["trials"] if r["status"] == "ok"]
    single = [r for r in summary["studies"]["single_cuda0"]["trials"] if r["status"] == "ok"]
    u0, u1 = gpus[0].info.uuid, gpus[1].info.uuid
    summary["checks"] = {
        "split_trials_ok": len(split), "single_trials_ok": len(single),
        "per_device_sums_equal_total": all(r["sum_matches_total"] for r in split + single) and bool(split + single),
        "split_meters_both_gpus": all(sorted(r["metered_uuids"]) == sorted([u0, u1]) for r in split) and bool(split),
        "split_both_gpus_above_loaded_idle": all(
            all((r["per_device_mean_power_w"][k] or 0) > (r["per_device_loaded_idle_w"][k] or 0)
                for k in r["per_device_mean_power_w"]) for r in split) and bool(split),
        "single_meters_gpu0_only": all(r["metered_uuids"] == [u0] for r in single) and bool(single),
    }

    write(summary, args, slug)

    # 3. measure() with GPU 1 visible but unused
    import torch

    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    torch.cuda.synchronize(0)
    with joulebench.measure(devices=[0], sampler=False, cpu=False) as m:
        end = time.perf_counter() + 3.0
        n = 0
        while time.perf_counter() < end:
            a @ a
            n += 1
            if n % 8 == 0:
                torch.cuda.synchronize(0)
    d = m.result.to_dict()
    summary["measure_unused"] = {"energy_j": d["energy_j"], "duration_s": d["duration_s"],
                                 "devices": [{k: x[k] for k in ("index", "uuid", "energy_j", "mean_power_w")}
                                             for x in d["devices"]],
                                 "unused_devices": [{k: x.get(k) for k in ("index", "uuid", "energy_j", "mean_power_w")}
                                                    for x in d["unused_devices"]]}
    mu = summary["measure_unused"]
    summary["checks"]["measure_unused_gpu_reported_apart"] = (
        [x["uuid"] for x in mu["devices"]] == [u0] and [x["uuid"] for x in mu["unused_devices"]] == [u1]
        and abs(mu["energy_j"] - mu["devices"][0]["energy_j"]) <= 1e-6 * mu["energy_j"])
    print("measure(devices=[0]):", json.dumps(mu))
    print("checks:", json.dumps(summary["checks"]))
    print("written:", write(summary, args, slug))
    return 0 if all(summary["checks"].values()) else 1


def write(summary: dict, args, slug: str) -> Path:
    dest = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"multigpu-{slug}-{summary['date']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=1, default=str))
    return dest


if __name__ == "__main__":
    sys.exit(main())
