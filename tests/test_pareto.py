"""Pareto fronts on hand-made sets with known answers."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from joulebench.analysis.pareto import (ENERGY, ITL, THROUGHPUT, TTFT, default_fronts, dominates, pareto_mask,
                                        pareto_table)

# (J/token, TTFT s): A, B, C are the front; D is dominated by B; E by A and B; F ties A exactly.
POINTS = {"A": (0.10, 0.50), "B": (0.20, 0.20), "C": (0.50, 0.05), "D": (0.30, 0.30), "E": (0.25, 0.60),
          "F": (0.10, 0.50)}


def test_known_front_min_min():
    mask = pareto_mask(list(POINTS.values()), ["min", "min"])
    assert dict(zip(POINTS, mask)) == {"A": True, "B": True, "C": True, "D": False, "E": False, "F": True}


def test_known_front_min_max():
    # (J/token, tokens/s): lower energy and higher throughput are better
    pts = [(0.1, 100.0), (0.2, 300.0), (0.15, 90.0), (0.3, 300.0), (0.05, 10.0)]
    assert pareto_mask(pts, ["min", "max"]).tolist() == [True, True, False, False, True]


def test_dominates_and_nan_and_errors():
    assert dominates((1, 1), (2, 2), ["min", "min"])
    assert not dominates((1, 1), (1, 1), ["min", "min"])
    assert dominates((1, 5), (1, 4), ["min", "max"])
    mask = pareto_mask([(1.0, float("nan")), (2.0, 2.0)], ["min", "min"])
    assert mask.tolist() == [False, True]
    with pytest.raises(ValueError):
        pareto_mask([(1, 2, 3)], ["min", "min"])
    with pytest.raises(ValueError):
        pareto_mask([(1, 2)], ["min", "up"])


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 20), hs.integers(0, 20)), min_size=1, max_size=25))
def test_front_matches_brute_force(pts):
    senses = ["min", "max"]
    mask = pareto_mask(pts, senses)
    for i, p in enumerate(pts):
        assert mask[i] == (not any(dominates(q, p, senses) for q in pts))
    # the front is never empty and no front point dominates another
    assert mask.any()
    front = [p for p, m in zip(pts, mask) if m]
    assert not any(dominates(a, b, senses) for a, b in itertools.permutations(front, 2))


def test_pareto_table_marks_dominated_with_a_dominator():
    summary = pd.DataFrame({"config_id": list(POINTS),
                            ENERGY.column: [p[0] for p in POINTS.values()],
                            TTFT.column: [p[1] for p in POINTS.values()]})
    t = pareto_table(summary, ENERGY, TTFT).set_index("config_id")
    assert t.loc["D", "status"] == "dominated" and t.loc["D", "dominated_by"] == "B"
    assert t.loc["E", "dominated_by"] in {"A", "B", "F"}
    assert t.loc["A", "on_front"] and pd.isna(t.loc["A", "dominated_by"])


def test_default_fronts_with_and_without_energy():
    s = pd.DataFrame({"config_id": ["a", "b"], ENERGY.column: [1.0, 2.0], THROUGHPUT.column: [5.0, 9.0],
                      TTFT.column: [0.1, 0.2], ITL.column: [np.nan, np.nan]})
    assert default_fronts(s) == [(ENERGY, TTFT), (ENERGY, THROUGHPUT)]
    s[ENERGY.column] = np.nan
    assert default_fronts(s) == [(THROUGHPUT, TTFT)]
