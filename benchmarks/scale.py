"""Scale a newcomer reaches soon: `plan` of 10,000 configurations and `report` of 1,000 trials.

    python benchmarks/scale.py [--configs 10000] [--trials 1000] [--work DIR] [--markdown FILE]

1. plan: a study whose sweep expands to --configs configurations; timed in-process
   (build_plan, wall and CPU) and as the `joulebench plan` command (wall, start-up included).
2. report: one real trial record (a tiny study run on this machine, CPU) is the template for a
   generated study directory of --trials trials (configurations x 4 repeats, values perturbed with a
   seeded noise, each with its own timeseries file); `joulebench report` on it is timed (wall) and
   build in-process (CPU).
Prints the figures and their ratio to the targets (plan 2 s, report 10 s).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "joulebench.cli"]
PLAN_TARGET_S, REPORT_TARGET_S = 2.0, 10.0
FAST = {"min_window_s": 0.2, "device_idle_s": 0, "loaded_idle_s": 0,
        "warmup": {"min_passes": 1, "max_passes": 2, "k": 2}}


def _study(name: str, n_configs: int) -> dict:
    a = max(d for d in range(1, int(n_configs ** 0.5) + 1) if n_configs % d == 0)   # a x b == n_configs
    b = n_configs // a
    return {"name": name, "model": "synthetic:tiny-llama", "backend": "transformers", "device": "cpu",
            "engine": {"dtype": "float32"},
            "workload": {"dataset": "synthetic", "prompts": 2, "input_tokens": 8, "max_output_tokens": 4},
            "sweep": {"batch_size": list(range(1, a + 1)), "max_output_tokens": list(range(1, b + 1))},
            "repeats": 4, "measurement": FAST, "runner": "process"}


def bench_plan(work: Path, n_configs: int) -> dict:
    from joulebench.config import load_study
    from joulebench.study.plan import build_plan

    path = work / "plan-study.yaml"
    path.write_text(yaml.safe_dump(_study("scale-plan", n_configs), sort_keys=False))
    t0, c0 = time.perf_counter(), time.process_time()
    plan = build_plan(load_study(path))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "plan", str(path)], capture_output=True, text=True, timeout=600)
    cli_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"joulebench plan failed: {proc.stderr[-2000:]}")
    return {"configs": len(plan.configs), "build_plan_wall_s": wall, "build_plan_cpu_s": cpu,
            "cli_plan_wall_s": cli_wall}


def _template(work: Path) -> tuple[dict, Path | None]:
    """A real trial record (and its timeseries file) from a one-trial study run here."""
    study = dict(_study("scale-template", 1), repeats=1)
    study.pop("sweep")
    path = work / "template.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = work / "template-run"
    proc = subprocess.run([*CLI, "run", str(path), "--out", str(out), "--quiet"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    recs = sorted((out / "trials").glob("*.json"))
    if proc.returncode != 0 or not recs:
        raise SystemExit(f"template study failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    ts = sorted((out / "timeseries").glob("*.parquet"))
    return json.loads(recs[0].read_text()), (ts[0] if ts else None)


def _perturb(rec: dict, rng: random.Random) -> dict:
    out = dict(rec)
    for k, v in rec.items():
        if isinstance(v, float) and k.endswith(("_j", "_s", "_w", "_tok_s")) and not k.endswith("_at"):
            out[k] = v * (1 + rng.gauss(0, 0.03))
    return out


def make_study_dir(work: Path, n_trials: int) -> Path:
    from joulebench.config import load_study
    from joulebench.study.run import _prepare_new_study
    from joulebench.study.plan import build_plan, trial_id_for
    from joulebench.results.store import atomic_write_json

    template, ts = _template(work)
    repeats = 4
    path = work / "report-study.yaml"
    path.write_text(yaml.safe_dump(_study("scale-report", max(1, n_trials // repeats)), sort_keys=False))
    loaded = load_study(path)
    plan = build_plan(loaded)
    d = work / "report-study"
    shutil.rmtree(d, ignore_errors=True)
    store = _prepare_new_study(loaded, plan, d, str(path))
    rng = random.Random(7)
    for c in plan.configs[: n_trials // repeats]:
        for r in range(repeats):
            tid = trial_id_for(c.config_id, r)
            rec = _perturb(template, rng)
            rec.update(trial_id=tid, config_id=c.config_id, params=c.params, repeat=r, round=r)
            atomic_write_json(store.trial_path(tid), rec)
            if ts is not None:
                shutil.copyfile(ts, store.timeseries_dir / f"{tid}.parquet")
    store.update_manifest(status="finished")
    return d


def bench_report(work: Path, n_trials: int) -> dict:
    d = make_study_dir(work, n_trials)
    n = len(list((d / "trials").glob("*.json")))
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "report", str(d)], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"joulebench report failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    child = _child_cpu_s(lambda: subprocess.run([*CLI, "report", str(d)], capture_output=True, timeout=1800))
    return {"trials": n, "cli_report_wall_s": wall, "cli_report_cpu_s": child,
            "report_html_bytes": (d / "report.html").stat().st_size}


def _child_cpu_s(fn) -> float:
    before = os.times()
    fn()
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=1_000)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--markdown", type=Path, help="also write the figures as a markdown table here")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="jb-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    p = bench_plan(work, args.configs)
    r = bench_report(work, args.trials)
    rows = [
        ("plan: configurations", f"{p['configs']:,}", ""),
        ("plan: build_plan wall / CPU (s)", f"{p['build_plan_wall_s']:.2f} / {p['build_plan_cpu_s']:.2f}",
         f"{p['build_plan_wall_s'] / PLAN_TARGET_S:.2f} of the {PLAN_TARGET_S:g} s target"),
        ("plan: `joulebench plan` wall (s, start-up included)", f"{p['cli_plan_wall_s']:.2f}",
         f"{p['cli_plan_wall_s'] / PLAN_TARGET_S:.2f} of the target"),
        ("report: trials", f"{r['trials']:,}", ""),
        ("report: `joulebench report` wall / CPU (s)", f"{r['cli_report_wall_s']:.2f} / {r['cli_report_cpu_s']:.2f}",
         f"{r['cli_report_wall_s'] / REPORT_TARGET_S:.2f} of the {REPORT_TARGET_S:g} s target"),
        ("report.html size (KB)", f"{r['report_html_bytes'] / 1024:.0f}", ""),
    ]
    print(f"host: {os.cpu_count()} CPUs, load average {load:.1f} at the start")
    for name, val, ratio in rows:
        print(f"{name:55s} {val:>18s}  {ratio}")
    if args.markdown:
        lines = [f"Host: {os.cpu_count()} CPUs, load average {load:.1f} at the start.", "",
                 "| figure | value | against the target |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
