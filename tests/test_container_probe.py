"""benchmarks/container_probe.py: the medians per variant and their ratios to the host (pure)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
probe = load_benchmark("container_probe")


def _rows(variant, launches, syscalls):
    return [{"variant": variant, "launches_per_s": a, "syscalls_per_s": b} for a, b in zip(launches, syscalls)]


def test_medians_and_ratios_to_the_host():
    rows = (_rows("host", [100, 110, 90], [1000, 1000, 1200]) + _rows("joulebench", [99, 98, 300], [900, 950, 940])
            + _rows("unconfined", [101, 100, 99], [990, 960, 980]))
    m = probe.medians(rows)
    assert m["host"]["launches_per_s"] == 100 and m["host"]["launches_ratio_to_host"] == 1.0
    assert m["joulebench"]["launches_per_s"] == 99          # the median ignores one outlier round
    assert m["joulebench"]["syscalls_ratio_to_host"] == pytest.approx(940 / 1000)
    assert m["unconfined"]["syscalls_ratio_to_host"] == pytest.approx(980 / 1000)


def test_no_launch_loop_and_no_host_give_none_not_errors():
    m = probe.medians(_rows("joulebench", [None, None], [900, 800]))
    assert "host" not in m
    assert m["joulebench"]["launches_per_s"] is None and m["joulebench"]["launches_ratio_to_host"] is None
    assert m["joulebench"]["syscalls_ratio_to_host"] is None
