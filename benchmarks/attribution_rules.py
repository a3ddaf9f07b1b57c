#!/usr/bin/env python3
"""Attribution rules compared on stored served windows: a two-class study (a short/long mix and each class
alone, one server, same concurrency), every trial with its requests trace and timeline.

For each rule, each class's mean attributed J/request inside the mix is set against the same class alone
(``analysis.attribution.compare_class_alone``). A fair rule gives both classes the same mix/alone ratio: the
mix's own excess over its classes alone (``mix_excess``), which no rule can take away from the classes.

Rules: ``tokens`` (every decode token 1 unit: the record's rule) and ``context`` (a decode token counts
1 + w x context x requests decoding, w = ``context_weight_of`` the model's shape from the records), plus
``--weights`` for other w values.

    python benchmarks/attribution_rules.py STUDY_DIR [--json out.json]

STUDY_DIR: a study folder (trials/, timeseries/ with <trial>.requests.parquet), e.g. the two-class study of
``benchmarks/vllm_gpu.py --parts twoclass``, or a folder unpacked from its vllm-traces tarball.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def class_names(rec: dict) -> list[str]:
    return [c["name"] for c in (rec.get("params") or {}).get("classes") or []]


def load(study_dir: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sorted((study_dir / "trials").glob("*.json"))]
    return [r for r in recs if r.get("status") == "ok" and r.get("requests_trace")
            and (study_dir / r["requests_trace"]).is_file()]


def compare_rules(study_dir: Path, weights: dict[str, float]) -> dict[str, Any]:
    """Per rule: each class in the mix against alone; the mix's excess energy over its classes alone."""
    from joulebench.analysis.attribution import compare_class_alone
    from joulebench.results.requests import reattribute

    recs = load(study_dir)
    if not recs:
        raise SystemExit(f"{study_dir}: no ok trial with a requests trace")
    mix = [r for r in recs if len(class_names(r)) == 2]
    names = sorted({n for r in mix for n in class_names(r)})
    alone = {n: [r for r in recs if class_names(r) == [n]] for n in names}
    if not mix or not all(alone.values()):
        raise SystemExit(f"{study_dir}: needs trials of the two-class mix and of each class alone")
    out: dict[str, Any] = {"study_dir": str(study_dir), "trials": {"mix": len(mix), **{n: len(v) for n, v in alone.items()}},
                           "rules": {}}
    # the mix's excess: window energy per request of the mix against the classes alone, weighted by the mix's shares
    def per_req(rs):
        return statistics.mean(r["per_request_energy"]["window_energy_j"] / r["per_request_energy"]["requests"]
                               for r in rs)
    alone_j = {n: per_req(v) for n, v in alone.items()}
    shares = {n: statistics.mean(next(c["share"] for c in r["params"]["classes"] if c["name"] == n) for r in mix)
              for n in names}
    expected = sum(shares[n] * alone_j[n] for n in names)
    out["mix_excess"] = per_req(mix) / expected - 1.0
    for rule, w in weights.items():
        blocks = {}
        for r in recs:
            ts = study_dir / r["timeseries"] if r.get("timeseries") else None
            b = reattribute(study_dir / r["requests_trace"], ts, context_weight=w)
            blocks[r["trial_id"]] = {**r, "per_request_energy": b.model_dump(mode="json")}
        mix_b = [blocks[r["trial_id"]] for r in mix]
        res = {"context_weight": w, "conservation_max_rel_error":
               max(b["per_request_energy"]["conservation_rel_error"] for b in blocks.values()), "classes": {}}
        for n in names:
            res["classes"][n] = compare_class_alone(mix_b, [blocks[r["trial_id"]] for r in alone[n]], n).as_dict()
        ratios = [c["ratio"] for c in res["classes"].values()]
        res["spread"] = max(ratios) - min(ratios)     # 0: both classes pay the mix's excess alike
        out["rules"][rule] = res
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--weights", type=float, nargs="*", default=[], help="more context weights to try")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from joulebench.analysis.attribution import context_weight_of

    recs = load(args.study_dir)
    config = next(((r.get("model") or {}).get("config") for r in recs if (r.get("model") or {}).get("config")), {})
    w = context_weight_of(config) if config else None
    weights = {"tokens": 0.0}
    if w:
        weights["context"] = w
    weights.update({f"w={x:g}": x for x in args.weights})
    doc = compare_rules(args.study_dir, weights)
    doc["model_context_weight"] = w
    print(f"mix excess over its classes alone: {doc['mix_excess']:+.1%}")
    for rule, res in doc["rules"].items():
        cls = "  ".join(f"{n}: {c['mix_j_per_request']:.3f} J in the mix vs {c['alone_j_per_request']:.3f} alone "
                        f"({c['rel_diff']:+.1%})" for n, c in res["classes"].items())
        print(f"{rule:<10} w={res['context_weight']:.3g}  {cls}  spread {res['spread']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
