"""Served vLLM on a real H100 with requests traces (the second 2026-12-07 run: prefix cache isolated per pass,
served warm-up of one running batch). tests/fixtures/vllm/h100_two_class holds one round of the two-class study
(the 50/50 short/long mix and each class alone, max_num_seqs = concurrency = 64): records, sampler timelines
and requests traces as the worker wrote them. The figures are in benchmarks/results/vllm-mlenergy-h100-2026-12-07.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from joulebench.results.requests import read_requests_trace, reattribute

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "fixtures" / "vllm" / "h100_two_class"
RESULT = json.loads((REPO / "benchmarks" / "results" / "vllm-mlenergy-h100-2026-12-07.json").read_text())
RECORDS = [json.loads(p.read_text()) for p in sorted((STUDY / "trials").glob("*.json"))]
attribution_rules = load_benchmark("attribution_rules")


def _classes(rec):
    return [c["name"] for c in rec["params"]["classes"]]


def test_fixture_is_one_round_of_the_two_class_study_on_an_h100():
    assert sorted(map(_classes, RECORDS)) == [["long"], ["short"], ["short", "long"]]
    for rec in RECORDS:
        assert rec["status"] == "ok" and rec["energy_source"] == "nvml-counter"
        assert rec["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
        # a served warm-up pass of one running batch (64 of 256 requests)
        assert rec["warmup"]["requests_per_pass"] == 64 and rec["params"]["prompts"] == 256


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r["trial_id"])
def test_requests_trace_holds_every_request_and_token_of_the_window(rec):
    results, meta = read_requests_trace(STUDY / rec["requests_trace"])
    assert len(results) == rec["requests"] == rec["passes"] * 256
    forced = {c["name"]: c["output_tokens"] for c in rec["params"]["classes"]}
    assert all(r.output_tokens == forced[r.request_class] == len(r.token_times_s) for r in results)
    assert sum(r.output_tokens for r in results) == rec["whole_window"]["output_tokens"]
    assert meta["window_energy_j"] == pytest.approx(rec["whole_window"]["energy_j"], rel=1e-12)
    assert meta["device_uuids"] == [rec["devices"][0]["uuid"]]
    # token times inside the window (timeline clock), in order within each request
    start, end = meta["window_start_s"], meta["window_end_s"]
    for r in results:
        t = [x + meta["clock_offset_s"] for x in r.token_times_s]
        assert start - 0.01 <= t[0] and t[-1] <= end + 0.01 and t == sorted(t)


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r["trial_id"])
def test_the_rule_applied_again_offline_gives_the_records_block(rec):
    block = reattribute(STUDY / rec["requests_trace"], STUDY / rec["timeseries"])
    pre = rec["per_request_energy"]
    assert block.interval_source == pre["interval_source"] == "counter"
    assert block.intervals == pre["intervals"] and block.conservation_rel_error < 1e-9
    assert block.window_energy_j == pytest.approx(pre["window_energy_j"], rel=1e-12)
    for q in ("median", "p90", "p99"):
        assert block.energy_j.model_dump()[q] == pytest.approx(pre["energy_j"][q], rel=1e-4), q
    for name, c in pre["by_class"].items():
        assert block.by_class[name].energy_j_mean == pytest.approx(c["energy_j_mean"], rel=1e-4)


def test_context_weighted_rule_is_fairer_to_short_requests_on_gpu_traces():
    from joulebench.analysis.attribution import context_weight_of

    w = context_weight_of(RECORDS[0]["model"]["config"])
    assert w == pytest.approx(8.73e-6, rel=1e-3)
    doc = attribution_rules.compare_rules(STUDY, {"tokens": 0.0, "context": w})
    assert 0.0 < doc["mix_excess"] < 0.15                     # the mix cost more than its classes alone
    tok, ctx = doc["rules"]["tokens"], doc["rules"]["context"]
    # the token rule charges the short class far beyond the mix's excess; the context rule halves the spread
    assert tok["classes"]["short"]["rel_diff"] > 0.3 and tok["classes"]["long"]["rel_diff"] < 0.1
    assert ctx["spread"] < tok["spread"] / 2
    assert ctx["classes"]["short"]["rel_diff"] < tok["classes"]["short"]["rel_diff"]
    assert ctx["classes"]["long"]["rel_diff"] > tok["classes"]["long"]["rel_diff"]
    for res in (tok, ctx):
        assert res["conservation_max_rel_error"] < 1e-9


def test_result_file_has_what_the_issue_asks_for():
    assert RESULT["gpu"] == "NVIDIA H100 80GB HBM3" and RESULT["vllm_version"] == "0.26.0"
    pts = {p["max_num_seqs"]: p for p in RESULT["points"] if not p.get("variant")}
    assert sorted(pts) == [8, 64, 512]
    api4 = [p for p in RESULT["points"] if p.get("variant") == "api4"]
    assert [p["max_num_seqs"] for p in api4] == [512]
    for b, p in [*pts.items(), (512, api4[0])]:
        xs = p["j_per_output_token"]
        assert p["repeats"] == len(xs) == 5 and p["ci95"][0] < p["j_per_output_token_mean"] < p["ci95"][1]
        assert p["mlenergy_j_per_output_token"] == {8: 0.4548, 64: 0.1186, 512: 0.0702}[b]
        assert p["cv_within_1pct"] == (p["cv"] <= 0.01)
        assert p["window_power_w_mean"] > 0
    pr = RESULT["per_request"]
    assert pr["conservation_max_rel_error"] < 1e-9
    assert set(pr["two_class_agreement"]["classes"]) == {"short", "long"}
    assert 0 < RESULT["sweep_efficiency"]["windows_share"] < RESULT["sweep_efficiency"]["windows_share_after_server_start"] < 1
    mo = RESULT["meter_overhead_ratio"]
    assert mo["ci95"][0] < mo["ratio_mean"] < mo["ci95"][1] and mo["complete"] is True and mo["pairs"] == 8
    ratios = RESULT["meter_overhead"]["whole_pass"]["ratios"]
    assert len(ratios) == 8 and sum(ratios) / 8 == pytest.approx(mo["ratio_mean"], rel=1e-12)
    # the B = 512 spread: five repeats, each with the load generator's share of a core and its pauses
    spread = RESULT["b512_spread"]["per_repeat"]
    assert [r["j_per_output_token"] for r in spread] == api4[0]["j_per_output_token"]
    assert all(r["worker_cpu_share"] > 0.85 and r["pauses"] >= 10 for r in spread)


def test_stream_stats_on_gpu_traces_and_by_hand():
    mod = load_benchmark("stream_stats")
    from joulebench.backends.base import RequestResult

    # by hand: two requests, tokens 10 ms apart, one whole-server pause of 200 ms, one double token
    rs = [RequestResult(index=0, input_tokens=1, output_tokens=4, submit_s=0.0, token_times_s=[0.0, 0.01, 0.21, 0.21]),
          RequestResult(index=1, input_tokens=1, output_tokens=2, submit_s=0.0, token_times_s=[0.005, 0.015])]
    st = mod.stream_stats(rs, pause_s=0.05)
    assert st["tokens"] == 6 and st["pauses"] == 1 and st["pause_total_s"] == pytest.approx(0.195)
    assert st["same_event_share"] == pytest.approx(1 / 4) and st["itl_ms"]["max"] == pytest.approx(200.0)
    # the long class alone on the H100: ~10 ms between a request's tokens (64 running, CUDA graphs)
    rec = next(r for r in RECORDS if _classes(r) == ["long"])
    results, _ = read_requests_trace(STUDY / rec["requests_trace"])
    st = mod.stream_stats(results)
    assert st["tokens"] == rec["whole_window"]["output_tokens"]
    assert 5.0 < st["itl_ms"]["median"] < 20.0 and st["itl_ms"]["median"] <= st["itl_ms"]["p90"] <= st["itl_ms"]["p99"]


def test_b512_records_show_the_load_generator_near_a_whole_core():
    """The third run's five B = 512 records (they asked for --api-server-count 4, which the server's entry point
    then ignored: one API server ran): the worker, which runs the load generator,
    is the busiest process of the trial's tree and is flagged; its share matches the result file's table."""
    recs = [json.loads(p.read_text()) for p in sorted((REPO / "tests" / "fixtures" / "vllm" / "h100_b512_api4"
                                                       / "trials").glob("*.json"))]
    spread = RESULT["b512_spread"]["per_repeat"]
    assert len(recs) == len(spread) == 5
    for rec, row in zip(recs, spread):
        assert rec["repeat"] == row["repeat"]
        assert rec["energy_per_output_token_j"] == pytest.approx(row["j_per_output_token"], rel=1e-12)
        top = rec["host_cpu"]["busiest"][0]
        assert top["cpu_share"] == pytest.approx(row["worker_cpu_share"], abs=5e-4)
        busy = [f for f in rec["flags"] if f["code"] == "host_cpu_busy"]
        assert bool(busy) == (top["cpu_share"] >= 0.9)          # 4 of 5 repeats; r4 at 88.5 % is not flagged
        assert all(f"pid {top['pid']}" in f["detail"] for f in busy)
        command = rec["load_notes"]["command"]
        assert command[command.index("--api-server-count") + 1] == "4"
        assert rec["steady_state"]["running_batch_mean"] > 0.98 * 512


def test_fifth_run_points_agree_with_their_repeats():
    """The fifth 2026-12-07 run (new load generator): each point's mean, CV and ML.ENERGY ratio follow from its
    five repeats, and the meter overhead's verdict from its interval."""
    vllm_gpu = load_benchmark("vllm_gpu")
    pts = {(p["max_num_seqs"], p.get("variant")): p for p in RESULT["points"]}
    for key, ml in (((64, "newclient"), 0.1186), ((64, "lengths"), 0.1186), ((512, "newclient-api4"), 0.0702)):
        p = pts[key]
        xs = p["j_per_output_token"]
        assert p["repeats"] == len(xs) == 5 and p["failed"] == 0 and p["run"].startswith("fifth")
        assert p["j_per_output_token_mean"] == pytest.approx(sum(xs) / 5, rel=1e-12)
        assert p["cv"] == pytest.approx(vllm_gpu.cv(xs), rel=1e-9)
        assert p["ratio_to_mlenergy"] == pytest.approx(p["j_per_output_token_mean"] / ml, rel=1e-9)
        assert max(p["conservation_rel_errors"]) < 1e-9
    assert pts[(64, "newclient")]["cv"] < 0.01 and pts[(64, "lengths")]["cv"] < 0.01
    assert pts[(512, "newclient-api4")]["cv"] > 0.01                    # B = 512 not yet within 1 %
    assert pts[(512, "newclient-api4")]["api_servers_running"] == 1
    assert 0.8 < pts[(64, "lengths")]["ratio_to_mlenergy"] < 1.2        # ML.ENERGY-like lengths: gap < 20 %
    mo = RESULT["meter_overhead_ratio"]
    assert mo["inside_1pct"] == (0.99 <= mo["ci95"][0] and mo["ci95"][1] <= 1.01) is True
    assert mo["steady_window"]["inside_1pct"] is False and mo["earlier"]["pairs"] == 8
