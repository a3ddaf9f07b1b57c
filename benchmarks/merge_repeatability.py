#!/usr/bin/env python3
"""Join the parts of a repeatability run made in separate calls into one summary.

``repeatability.py`` can run its parts apart (``--only-synthetic-vs-real``,
``--only-overhead``), e.g. when a GPU session runs them in separate commands.
This writes one ``repeatability-<gpu>-<date>.json`` with every key:

    python benchmarks/merge_repeatability.py MAIN.json [--svr SVR.json] [--overhead OV.json]
        [--adaptive AD.json ...] --out OUT.json

``--overhead``'s paired figure becomes ``overhead_ratio`` (the main run's own paired figure
is kept as ``overhead_paired_main``); each ``--adaptive`` run (``repeatability.py --adaptive``) adds its
configurations under ``adaptive``, each with whether its J/token CI half-width reached the target; each
part's file name is listed under ``parts``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("main")
    ap.add_argument("--svr", help="a --only-synthetic-vs-real summary")
    ap.add_argument("--overhead", help="an --only-overhead summary")
    ap.add_argument("--adaptive", nargs="+", default=[], help="--adaptive summaries")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = json.loads(Path(args.main).read_text())
    # MAIN may itself be a merged summary: its parts stay listed, and a new part is added beside them
    out["parts"] = out.get("parts") or {"main": Path(args.main).name}
    if args.svr:
        svr = json.loads(Path(args.svr).read_text())
        if svr.get("gpu") != out.get("gpu"):
            print(f"the parts ran on different GPUs ({svr.get('gpu')} vs {out.get('gpu')})", file=sys.stderr)
            return 1
        out["synthetic_vs_real"] = svr["synthetic_vs_real"]
        out["parts"]["synthetic_vs_real"] = Path(args.svr).name
    if args.overhead:
        ov = json.loads(Path(args.overhead).read_text())
        if ov.get("gpu") != out.get("gpu"):
            print(f"the parts ran on different GPUs ({ov.get('gpu')} vs {out.get('gpu')})", file=sys.stderr)
            return 1
        if out.get("overhead_paired"):
            # the main run's own paired figure, or an earlier separate overhead run's
            key = "overhead_paired_earlier" if "overhead" in out["parts"] else "overhead_paired_main"
            out[key] = out["overhead_paired"]
            if key == "overhead_paired_earlier":
                out["parts"]["overhead_earlier"] = out["parts"]["overhead"]
        out["overhead_paired"] = ov["overhead_paired"]
        out["overhead_ratio"] = ov["overhead_paired"]["ratio_mean"]
        out["parts"]["overhead"] = Path(args.overhead).name
    for path in args.adaptive:
        ad = json.loads(Path(path).read_text())
        if ad.get("gpu") != out.get("gpu"):
            print(f"the parts ran on different GPUs ({ad.get('gpu')} vs {out.get('gpu')})", file=sys.stderr)
            return 1
        rule = ad.get("settings") or {}
        target = 0.02   # repeatability.py --adaptive's ci_target
        for name, c in ad["configs"].items():
            if not c.get("runs"):
                print(f"{path}: {name} has no successful runs", file=sys.stderr)
                return 1
            out.setdefault("adaptive", {})[name] = {
                **c, "ci_target": target, "max_repeats": rule.get("adaptive_max"),
                "reached_target": c["ci_halfwidth_rel"] is not None and c["ci_halfwidth_rel"] <= target,
                "gpu_uuid": next((g.get("uuid") for g in (ad.get("environment") or {}).get("gpus", [])), None)}
        out["parts"].setdefault("adaptive", []).append(Path(path).name)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print("written:", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
