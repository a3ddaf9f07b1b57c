#!/usr/bin/env python3
"""The engine comparison of a finished ``studies/engines-gpu.yaml`` run, as one JSON file.

    python benchmarks/engines_compare.py STUDY_DIR --out benchmarks/results/engines-gpu-<gpu>-<date>.json \
        [--version sglang=0.5.17 ...]

Per engine (``param.backend``) and load level (the study's other sweep axes, e.g. concurrency): the
repeats, J/output-token mean with its 95 % CI (Student's t over the repeats, as the report), tokens/s,
median TTFT and TPOT (medians over the repeats of each trial's median) and the window's mean power.
Engine versions come from the trial records' environment where the library is listed there
(``--version`` fills or overrides them: SGLang runs as a server and is not imported by the worker).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence


def _clean(x: Any) -> Any:
    if hasattr(x, "item") and not isinstance(x, (list, dict, str)):
        x = x.item()          # numpy scalars
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _median(xs: Sequence[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(vals) if vals else None


def _mean(xs: Sequence[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(vals) / len(vals) if vals else None


def compare(trials, axes: Sequence[str], *, gpu: str | None, versions: dict[str, str | None]) -> dict[str, Any]:
    """The comparison document from the trial table (``results.table.load_results``); pure."""
    from joulebench.analysis.stats import mean_ci
    from joulebench.analysis.summary import group_rows

    metrics = ("energy_per_output_token_j", "throughput_tok_s", "ttft_s_median", "tpot_s_median", "mean_power_w")
    levels_axes = [a for a in axes if a != "backend"]
    engines: dict[str, list[dict[str, Any]]] = {}
    for rep in group_rows(trials.to_dict("records"), metrics):
        backend = rep.params.get("param.backend")
        level = {a: _clean(rep.params.get(f"param.{a}")) for a in levels_axes}
        mean, low, high = mean_ci(rep.ok_values("energy_per_output_token_j"), 0.95)[:3]
        engines.setdefault(str(backend), []).append({
            "level": level, "repeats": rep.n_ok, "failed": rep.n_failed,
            "j_per_output_token_mean": _clean(mean), "ci95": [_clean(low), _clean(high)],
            "throughput_tok_s": _mean(rep.ok_values("throughput_tok_s")),
            "ttft_s_median": _median(rep.ok_values("ttft_s_median")),
            "tpot_s_median": _median(rep.ok_values("tpot_s_median")),
            "window_power_w_mean": _mean(rep.ok_values("mean_power_w")),
            "config_id": rep.config_id})
    for rows in engines.values():
        rows.sort(key=lambda r: tuple(str(r["level"][a]) if not isinstance(r["level"][a], (int, float))
                                      else f"{r['level'][a]:020.6f}" for a in levels_axes))
    winners = []
    by_level: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rows in engines.items():
        for r in rows:
            if r["j_per_output_token_mean"] is not None:
                by_level.setdefault(json.dumps(r["level"], sort_keys=True), {})[name] = r
    for level, rows_of in sorted(by_level.items()):
        if len(rows_of) > 1:
            vals = {n: r["j_per_output_token_mean"] for n, r in rows_of.items()}
            best = min(vals, key=vals.get)
            runner_up = sorted(vals, key=vals.get)[1]
            winners.append({"level": json.loads(level), "fewest_j_per_output_token": best,
                            "ratio_to_next": vals[runner_up] / vals[best] if vals[best] else None,
                            "verdict": verdict(best, rows_of[best]["ci95"], runner_up, rows_of[runner_up]["ci95"])})
    return {"gpu": gpu, "engine_versions": versions, "axes": list(axes), "engines": engines,
            "winner_by_level": winners}


def verdict(best: str, best_ci: Sequence[Any], other: str, other_ci: Sequence[Any]) -> str:
    """Which engine wins a level, only where the 95 % CIs of J/output-token do not overlap. Pure."""
    if None in (*best_ci, *other_ci):
        return f"{best} (no CI)"
    if best_ci[1] < other_ci[0]:
        return best
    return f"no clear winner: the 95 % CIs of {best} and {other} overlap"


def effects_summary(trials, plan: dict[str, Any]) -> dict[str, Any]:
    """The report's effects table for the study (``backend`` and the levels as axes, with their interaction):
    variance shares of log(J/output-token) and main-effect ratios with 95 % CIs."""
    from joulebench.analysis.effects import fit_effects
    from joulebench.report.build import sweep_axes

    axes, levels = sweep_axes(plan, trials)
    eff = fit_effects(trials, axes, axis_levels=levels)

    def rows(df) -> list[dict[str, Any]]:
        return [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]

    return {"response": eff.label, "axes": rows(eff.axes), "interactions": rows(eff.interactions),
            "main_effects": rows(eff.main_effects), "headline": eff.headline}


def experiment_levels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Keys that an ``experiments:`` list varies within one engine's configurations (e.g. concurrency with the
    prompts per pass scaled to it): load levels beside the sweep axes. Pure."""
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for c in configs:
        params = c.get("params") or {}
        by_backend.setdefault(str(params.get("backend")), []).append(params)
    keys: list[str] = []
    for group in by_backend.values():
        for k in sorted({k for p in group for k in p}):
            vals = {json.dumps(p.get(k), sort_keys=True) for p in group}
            if len(vals) > 1 and k != "backend" and k not in keys:
                keys.append(k)
    return keys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--version", action="append", default=[], metavar="ENGINE=VERSION")
    args = ap.parse_args(argv)
    from joulebench.results.table import load_results

    trials = load_results(args.study_dir)
    plan = json.loads((args.study_dir / "plan.json").read_text()) if (args.study_dir / "plan.json").is_file() else {}
    axes = list(plan.get("axes") or {}) or ["backend"]
    axes += [k for k in experiment_levels(plan.get("configs") or []) if k not in axes]
    gpu, versions = None, {}
    for p in sorted((args.study_dir / "trials").glob("*.json")):
        rec = json.loads(p.read_text())
        env = rec.get("environment") or {}
        devices = [d for d in (rec.get("devices") or []) if isinstance(d, dict) and d.get("name")]
        inventory = [g for g in ((env.get("gpu") or {}).get("gpus") or []) if isinstance(g, dict)]
        gpu = gpu or (devices[0]["name"] if devices else inventory[0].get("name") if inventory else None)
        backend = (rec.get("params") or {}).get("backend")
        lib = (env.get("libraries") or {}).get(backend)
        if backend and lib and backend not in versions:
            versions[backend] = lib
    for item in args.version:
        name, _, ver = item.partition("=")
        versions[name] = ver or None
    doc = compare(trials, axes, gpu=gpu, versions=versions)
    try:
        doc["effects"] = effects_summary(trials, plan)
    except ImportError as exc:      # a GPU image without the report's statistics packages: run it later
        doc["effects"] = {"error": f"not computed here ({exc}); run `joulebench report` on the study"}
    doc["study_dir"] = str(args.study_dir)
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
