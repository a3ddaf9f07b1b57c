"""Pareto fronts of energy against latency and throughput (pure functions).

A configuration *dominates* another when it is at least as good on every objective
and strictly better on one. The front is the set of configurations no other one
dominates. Points with a missing objective take no part (neither on the front nor
dominated) and are reported as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """True when point ``a`` dominates ``b``; ``senses`` holds "min" or "max" per objective."""
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_mask(points: np.ndarray | Sequence[Sequence[float]], senses: Sequence[str]) -> np.ndarray:
    """Boolean mask of non-dominated rows (equal points are all kept). Rows with nan are False."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != len(senses):
        raise ValueError(f"points must be (n, {len(senses)}), got {pts.shape}")
    for s in senses:
        if s not in ("min", "max"):
            raise ValueError(f"sense must be 'min' or 'max', got {s!r}")
    sign = np.array([1.0 if s == "min" else -1.0 for s in senses])
    z = pts * sign
    valid = np.all(np.isfinite(z), axis=1)
    mask = np.zeros(len(z), dtype=bool)
    for i in np.flatnonzero(valid):
        others = z[valid]
        dominated = np.any(np.all(others <= z[i], axis=1) & np.any(others < z[i], axis=1))
        mask[i] = not dominated
    return mask


@dataclass(frozen=True)
class Objective:
    column: str
    label: str
    sense: str   # "min" | "max"


#: The fronts the report shows: J/output-token against each of these.
ENERGY = Objective("energy_per_output_token_j_mean", "J/output-token", "min")
THROUGHPUT = Objective("throughput_tok_s_mean", "tokens/s", "max")
TTFT = Objective("ttft_s_median_mean", "TTFT median (s)", "min")
ITL = Objective("itl_s_median_mean", "ITL median (s)", "min")


def default_fronts(summary: pd.DataFrame) -> list[tuple[Objective, Objective]]:
    """(x, y) pairs to draw: energy vs TTFT, ITL and throughput; without energy, throughput vs latency."""
    def has(o: Objective) -> bool:
        return o.column in summary and pd.to_numeric(summary[o.column], errors="coerce").notna().any()

    first = ENERGY if has(ENERGY) else THROUGHPUT
    others = [o for o in (TTFT, ITL, THROUGHPUT) if o is not first and has(o)]
    return [(first, o) for o in others] if has(first) else []


def pareto_table(summary: pd.DataFrame, x: Objective, y: Objective) -> pd.DataFrame:
    """Per configuration: the two objectives, ``on_front`` and ``dominated_by`` (a dominating config id)."""
    pts = np.column_stack([pd.to_numeric(summary.get(x.column), errors="coerce").to_numpy(dtype=float),
                           pd.to_numeric(summary.get(y.column), errors="coerce").to_numpy(dtype=float)])
    mask = pareto_mask(pts, [x.sense, y.sense])
    ids = summary["config_id"].tolist()
    dominated_by: list[str | None] = []
    for i, p in enumerate(pts):
        if mask[i] or not np.all(np.isfinite(p)):
            dominated_by.append(None)
            continue
        dom = [ids[j] for j in range(len(pts)) if mask[j] and dominates(pts[j], p, [x.sense, y.sense])]
        dominated_by.append(dom[0] if dom else None)
    out = pd.DataFrame({"config_id": ids, x.column: pts[:, 0], y.column: pts[:, 1],
                        "on_front": mask, "dominated_by": dominated_by})
    out["status"] = ["front" if m else ("dominated" if all(math.isfinite(v) for v in p) else "missing")
                     for m, p in zip(mask, pts)]
    return out
