#!/usr/bin/env python3
"""A compact JSON summary of a study directory: per trial the energy fields, devices, baselines, timeline.

    python benchmarks/summarize_study.py STUDY_DIR [--out summary.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summarize(study_dir: Path) -> dict:
    import pyarrow.parquet as pq

    trials = []
    for p in sorted((study_dir / "trials").glob("*.json")):
        r = json.loads(p.read_text())
        ts = r.get("timeseries")
        tl = None
        if ts and (study_dir / ts).exists():
            t = pq.read_table(study_dir / ts)
            tl = {"rows": t.num_rows, "columns": t.column_names}
        trials.append({k: r.get(k) for k in (
            "trial_id", "status", "error", "params", "energy_j", "energy_source", "energy_above_device_idle_j",
            "energy_above_loaded_idle_j", "energy_per_output_token_j", "energy_above_loaded_idle_per_output_token_j",
            "mean_power_w", "cpu_energy_j", "cpu_energy_source", "duration_s", "passes", "output_tokens",
            "throughput_tok_s", "ttft_s", "itl_s", "load_s", "load_energy_j", "peak_memory_bytes", "baselines",
            "warmup", "thermal", "devices")} | {
            "flags": [f["code"] for f in r.get("flags", [])], "timeseries": ts, "timeline": tl,
            "synthetic_weights": (r.get("model") or {}).get("synthetic_weights"),
            "gpu": [(g.get("name"), g.get("uuid")) for g in (r.get("environment") or {}).get("gpus", [])]
            or (r.get("environment") or {}).get("gpu")})
    env = {}
    if trials:
        first = json.loads(sorted((study_dir / "trials").glob("*.json"))[0].read_text())
        env = first.get("environment") or {}
    return {"study_dir": str(study_dir), "trials": trials, "environment": env,
            "ok": sum(t["status"] == "ok" for t in trials), "n": len(trials)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("study_dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    s = summarize(Path(args.study_dir))
    text = json.dumps(s, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    for t in s["trials"]:
        print(t["trial_id"], t["status"], t["energy_source"], t["energy_j"], "J", t["mean_power_w"], "W",
              t["energy_per_output_token_j"], "J/tok", t["throughput_tok_s"], "tok/s", "timeline", t["timeline"]
              and t["timeline"]["rows"], "flags", t["flags"])
    return 0 if s["n"] and s["ok"] == s["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
