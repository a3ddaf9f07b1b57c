#!/usr/bin/env python3
"""How smoothly tokens reached the client in a served window, from requests traces (results/requests.py).

Per trace: tokens, span, per-request gaps between consecutive tokens (median, p90, p99, max), the share of
tokens that came in the same event as the one before (several tokens per server-sent event), and the pauses
when no token reached the client for any request for longer than ``--pause-ms`` (a stalled server, scheduler
or client), with their total time.

    python benchmarks/stream_stats.py STUDY/timeseries/*.requests.parquet [--pause-ms 50]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def stream_stats(results, pause_s: float = 0.05) -> dict:
    """Pure: the figures above from a window's RequestResults."""
    times = [np.asarray(r.token_times_s, dtype=float) for r in results if r.token_times_s]
    if not times:
        return {"tokens": 0}
    itl = np.concatenate([np.diff(t) for t in times if len(t) > 1]) if any(len(t) > 1 for t in times) else np.array([])
    allt = np.sort(np.concatenate(times))
    gaps = np.diff(allt)
    pauses = gaps[gaps > pause_s]
    q = (lambda p: float(np.percentile(itl, p) * 1000)) if len(itl) else (lambda p: None)
    return {"tokens": int(len(allt)), "span_s": float(allt[-1] - allt[0]),
            "itl_ms": {"median": q(50), "p90": q(90), "p99": q(99), "max": float(itl.max() * 1000) if len(itl) else None},
            "same_event_share": float((itl == 0).mean()) if len(itl) else None,
            "pause_threshold_ms": pause_s * 1000, "pauses": int(len(pauses)), "pause_total_s": float(pauses.sum()),
            "longest_gap_ms": float(gaps.max() * 1000) if len(gaps) else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--pause-ms", type=float, default=50.0)
    args = ap.parse_args()
    from joulebench.results.requests import read_requests_trace

    for path in args.traces:
        results, _ = read_requests_trace(path)
        print(json.dumps({"trace": path.name, **stream_stats(results, args.pause_ms / 1000)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
