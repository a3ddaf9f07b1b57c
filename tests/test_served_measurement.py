"""Served-mode measurement logic on recorded and synthetic traces: ML.ENERGY's steady window, per-request
energy attribution (conservation), SLO goodput, workload shapes (output length distributions, request classes)."""
from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joulebench.analysis.attribution import (Intervals, attribute, compare_class_alone, length_fit,
                                             per_request_energy, timeline_intervals)
from joulebench.backends.base import RequestResult
from joulebench.backends.served.loadgen import (running_batch_mean, running_cap, steady_state, target_batch,
                                                warmup_subset, window_edges)
from joulebench.config.study import WorkloadConfig
from joulebench.meters.flags import Flag, steady_window_flags
from joulebench.worker.record import slo_fields
from joulebench.worker.trial import SteadyMarks
from joulebench.workloads import assign_classes, build_requests, draw_output_lengths


def _res(i, submit, times, *, inp=4, done=None, cls=None, exact=True, n_out=None):
    return RequestResult(index=i, input_tokens=inp, output_tokens=n_out if n_out is not None else len(times),
                         submit_s=submit, token_times_s=list(times), completed_s=done, request_class=cls,
                         token_times_exact=exact)


# ------------------------------------------------------------------ steady window (ML.ENERGY)
def test_target_batch_is_the_smaller_of_max_num_seqs_and_concurrency_else_n():
    assert target_batch(100, max_num_seqs=8, concurrency=4) == 4      # a closed loop of 4 never fills 8
    assert target_batch(100, max_num_seqs=8, concurrency=16) == 8
    assert target_batch(100, max_num_seqs=8) == 8
    assert target_batch(100, concurrency=4) == 4
    assert target_batch(100) == 100


def test_running_cap_is_the_smaller_of_max_num_seqs_and_concurrency():
    assert running_cap(100, max_num_seqs=64, concurrency=16) == 16
    assert running_cap(100, max_num_seqs=8, concurrency=16) == 8
    assert running_cap(100, max_num_seqs=8) == 8 and running_cap(100, concurrency=4) == 4
    assert running_cap(5, max_num_seqs=64) == 5 and running_cap(100) == 100


def test_served_warmup_subset_keeps_each_class_share_and_falls_back_to_the_workload():
    # a two-class workload in blocks (classes are assigned in order): the even picks take half of each
    reqs = [("short" if i < 60 else "long", i) for i in range(120)]
    sub = warmup_subset(reqs, 16, 1.0)
    assert len(sub) == 16 and len(set(sub)) == 16
    assert sum(1 for c, _ in sub if c == "short") == 8
    assert [i for _, i in sub] == sorted(i for _, i in sub) and sub[0] == reqs[0]
    assert len(warmup_subset(reqs, 16, 2.5)) == 40                 # 2.5 batches, rounded up
    assert warmup_subset(reqs, 64, 2.0) == reqs                    # 128 >= 120: the whole workload
    assert warmup_subset(reqs, 16, 0.0) == reqs                    # 0: the whole workload


def _all_at_once(n=6):
    # six requests sent at once at t=0, B=2: first tokens at 1..6, completions at 10..15 (completed_s = last + .1)
    return [_res(i, 0.0, [1.0 + i, 5.0 + i, 9.9 + i], done=10.0 + i) for i in range(n)]


def test_window_from_bth_first_token_to_n_minus_b_th_completion():
    rs = _all_at_once()
    random.Random(1).shuffle(rs)                       # order of the list does not matter
    assert window_edges(rs, 2) == (2.0, 13.0)          # 2nd first token at 2.0, 4th completion at 13.0
    ss = steady_state(rs, 2)
    assert (ss.start_s, ss.end_s, ss.batch) == (2.0, 13.0, 2)
    # tokens in [2, 13]: first tokens at 2..6 (5), middle tokens 5..10 (6), last tokens 9.9..12.9 (4)
    assert ss.output_tokens == 15
    # running (first token -> completion) inside [2, 13]: sum over requests of their overlap / 11 s
    busy = sum(max(0.0, min(13.0, 10.0 + i) - max(2.0, 1.0 + i)) for i in range(6))
    assert ss.running_batch_mean == pytest.approx(busy / 11.0)
    assert ss.as_dict()["definition"].startswith("B-th first token")


def test_no_steady_window_below_two_b_or_when_empty():
    rs = _all_at_once()
    assert steady_state(rs, 4) is None                 # N = 6 < 2B = 8
    assert steady_state(rs, 3) is not None             # 3rd first token 3.0 < 3rd completion 12.0
    # empty: one-token requests that complete as their token arrives (N = 2B: the edges coincide)
    late = [_res(i, 0.0, [1.0 + i]) for i in range(4)]
    assert window_edges(late, 2) is None


def test_completion_is_the_last_token_without_a_response_end():
    rs = [_res(i, 0.0, [1.0 + i, 3.0 + i]) for i in range(4)]
    assert window_edges(rs, 2) == (2.0, 4.0)           # 2nd first token 2.0; 2nd completion (last token) 4.0
    assert running_batch_mean(rs, 2.0, 4.0) == pytest.approx((1 + 2 + 1 + 0) / 2.0)


def test_steady_marks_sum_passes_and_fall_back_with_a_flag():
    marks = SteadyMarks([])
    ss = steady_state(_all_at_once(), 2)
    marks.on_start(100.0)
    marks.on_end(111.0)
    marks.close_pass(ss, 2, 6)
    s = marks.summary()
    assert (s["segments"], s["passes"], s["duration_s"], s["batch"], s["output_tokens"]) == (1, 1, 11.0, 2, 15)
    assert s["running_batch_mean"] == pytest.approx(ss.running_batch_mean)
    # a pass without a window (N < 2B): no segment, the summary still names B and the flag says what to do
    none = SteadyMarks([])
    none.close_pass(None, 8, 6)
    s0 = none.summary()
    assert s0["segments"] == 0 and s0["duration_s"] == 0 and s0["batch"] == 8
    (flag,) = steady_window_flags(s0, counter_period_s=0.1)
    assert flag.flag is Flag.NO_STEADY_WINDOW and "2B" in flag.advice and "6 requests per pass" in flag.detail


def test_low_occupancy_and_short_steady_window_flags():
    s = {"segments": 2, "duration_s": 12.0, "batch": 8, "running_batch_mean": 6.0}
    codes = {f.flag for f in steady_window_flags(s, counter_period_s=0.1)}
    assert codes == {Flag.LOW_BATCH_OCCUPANCY, Flag.SHORT_STEADY_WINDOW}    # 6 < 6.4; 6 s per pass < 10 s
    s = {"segments": 1, "duration_s": 12.0, "batch": 8, "running_batch_mean": 7.0}
    assert steady_window_flags(s, counter_period_s=0.1) == []
    assert steady_window_flags(None, counter_period_s=0.1) == []


# ------------------------------------------------------------------ attribution
def test_prefill_and_decode_tokens_share_an_interval_by_units():
    # one interval of 100 J; r0: 3 input tokens + first token + 1 decode = 5 units; r1: 1 + 1 + ... = first 2 units
    rs = [_res(0, 0.0, [0.2, 0.4], inp=3), _res(1, 0.0, [0.3], inp=1)]
    e = attribute(rs, Intervals(np.array([0.0, 1.0]), np.array([100.0]), "window"))
    assert e == pytest.approx([100.0 * 5 / 7, 100.0 * 2 / 7])
    e = attribute(rs, Intervals(np.array([0.0, 1.0]), np.array([100.0]), "window"), prefill_weight=0.0)
    assert e == pytest.approx([100.0 * 2 / 3, 100.0 * 1 / 3])


def test_context_weight_charges_a_decode_token_by_the_kv_cache_it_reads():
    # one interval of 100 J, two requests decoding in it (n = 2), no prefill weight:
    # r0 at contexts 100 and 101 (input 99 + tokens 1, 2), r1 at contexts 1000, 1001 (input 999)
    rs = [_res(0, 0.0, [0.1, 0.2, 0.3], inp=99), _res(1, 0.0, [0.1, 0.2, 0.3], inp=999)]
    iv = Intervals(np.array([0.0, 1.0]), np.array([100.0]), "window")
    w = 1e-3
    u0 = 1 + sum(1 + w * c * 2 for c in (100, 101))          # first token 1 unit (prefill weight 0)
    u1 = 1 + sum(1 + w * c * 2 for c in (1000, 1001))
    e = attribute(rs, iv, prefill_weight=0.0, context_weight=w)
    assert e == pytest.approx([100.0 * u0 / (u0 + u1), 100.0 * u1 / (u0 + u1)])
    assert attribute(rs, iv, prefill_weight=0.0) == pytest.approx([50.0, 50.0])      # w = 0: tokens alike
    with pytest.raises(ValueError, match="context_weight"):
        attribute(rs, iv, context_weight=-1.0)
    # n counts the requests decoding in each interval: alone in its interval, a token counts 1 + w * c
    edges = np.array([0.0, 1.0, 2.0])
    solo = [_res(0, 0.0, [0.1, 0.5], inp=9), _res(1, 0.0, [1.1, 1.5], inp=9)]
    e = attribute(solo, Intervals(edges, np.array([30.0, 70.0]), "window"), prefill_weight=0.0, context_weight=w)
    assert e == pytest.approx([30.0, 70.0])


def test_context_weight_of_a_shape_is_kv_bytes_over_step_weight_bytes():
    from joulebench.analysis.attribution import context_weight_of
    from joulebench.models import architectures

    h, inter, layers, vocab = 4096, 14336, 32, 128256          # Llama-3.1-8B: GQA 32 / 8 heads of 128
    step = layers * (h * 4096 + 2 * h * 1024 + 4096 * h + 3 * h * inter + 2 * h) + h + vocab * h
    assert context_weight_of(architectures()["llama-3.1-8b"]) == pytest.approx(2 * layers * 8 * 128 / step)
    assert context_weight_of({"hidden_size": 8}) is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 40), w=st.floats(0.0, 1e-2))
def test_conservation_holds_with_context_weight(seed, n, w):
    rng = random.Random(seed)
    rs = _random_trace(rng, n, 10.0)
    window_j = rng.uniform(1.0, 1e5)
    iv = timeline_intervals(_timeline(["GPU-a"], -1.0, 13.0, seed=seed), ["GPU-a"], 0.0, 12.0, window_j)
    block = per_request_energy(rs, iv, context_weight=w)
    assert block.conservation_rel_error < 1e-9 and block.context_weight == w


def test_tokenless_intervals_go_to_requests_in_flight_then_idle_in_proportion():
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    energy = np.array([30.0, 40.0, 50.0, 10.0])
    # r0 in flight over [0, 1.5] with its only token at 1.5; r1 submitted at 0.5, token at 2.5; nothing after 2.5
    rs = [_res(0, 0.0, [1.5], inp=0, done=1.5), _res(1, 0.5, [2.5], inp=0, done=2.5)]
    e = attribute(rs, Intervals(edges, energy, "counter"))
    # [0,1): no token, r0 in flight 1 s, r1 0.5 s -> 20 / 10; [1,2): r0's token -> 40; [2,3): r1's token -> 50
    # [3,4): nothing in flight -> 10 J in proportion to 60 / 60
    assert e == pytest.approx([20 + 40 + 5, 10 + 50 + 5])
    assert e.sum() == pytest.approx(energy.sum(), rel=1e-12)


def _timeline(uuids, t0, t1, hz=10.0, watts=(300.0,), counter=True, jitter=0.0, seed=0):
    rng = random.Random(seed)
    rows = []
    for d, uuid in enumerate(uuids):
        t, e = t0 + 0.03 * (d + 1), 1000.0
        while t < t1:
            p = watts[d % len(watts)] * (1 + 0.2 * math.sin(t))
            rows.append({"t_s": t, "device_uuid": uuid, "device_index": d, "kind": "gpu", "power_w": p,
                         "energy_j": e if counter else None})
            dt = 1.0 / hz + rng.uniform(-jitter, jitter)
            e += p * dt
            t += dt
    return pd.DataFrame(rows)


def test_timeline_intervals_from_counters_sum_to_the_window_energy():
    tl = _timeline(["GPU-a", "GPU-b"], 1000.0, 1010.0, watts=(300.0, 200.0), jitter=0.01)
    iv = timeline_intervals(tl, ["GPU-a", "GPU-b"], 1000.0, 1010.0, 5000.0)
    assert iv.source == "counter" and len(iv.energy_j) > 150       # union of both devices' sample times
    assert iv.energy_j.sum() == pytest.approx(5000.0, rel=1e-12)
    assert iv.scale == pytest.approx(5000.0 / (500.0 * 10.0), rel=0.05)   # the sine averages out nearly
    # power only: zero-order hold
    iv = timeline_intervals(_timeline(["GPU-a"], 1000.0, 1010.0, counter=False), ["GPU-a"], 1000.0, 1010.0, 3000.0)
    assert iv.source == "power" and iv.energy_j.sum() == pytest.approx(3000.0, rel=1e-12)
    # no timeline, or a device without rows: the window is one interval
    assert timeline_intervals(None, ["GPU-a"], 0.0, 1.0, 7.0).source == "window"
    assert timeline_intervals(tl, ["GPU-x"], 1000.0, 1010.0, 7.0).energy_j.tolist() == [7.0]


def _random_trace(rng: random.Random, n: int, span: float):
    rs = []
    for i in range(n):
        submit = rng.uniform(0, span * 0.7)
        k = rng.randint(0, 12)
        first = submit + rng.uniform(0.01, 1.0)
        times = sorted([first] + [first + rng.uniform(0, span * 0.3) for _ in range(k)])
        exact = rng.random() > 0.2
        n_out = len(times)
        if not exact and n_out >= 2:
            times, n_out = [times[0], times[-1]], n_out + rng.randint(0, 5)
        rs.append(_res(i, submit, times, inp=rng.randint(0, 300), exact=exact, n_out=n_out,
                       done=times[-1] + rng.uniform(0, 0.01) if times else None,
                       cls=rng.choice(["short", "long", None])))
    return rs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 40), weight=st.floats(0.0, 4.0),
       offset=st.floats(-1e6, 1e6), with_counter=st.booleans())
def test_conservation_holds_on_random_traces(seed, n, weight, offset, with_counter):
    rng = random.Random(seed)
    span = 10.0
    rs = _random_trace(rng, n, span)
    wall0 = 1.7e9
    window_j = rng.uniform(1.0, 1e5)
    tl = _timeline(["GPU-a"], wall0 - 1.0, wall0 + span + 3.0, counter=with_counter, jitter=0.02, seed=seed)
    # requests live on perf_counter, the timeline on wall time: offset = wall - perf
    perf_rs = [_res(r.index, r.submit_s - offset, [t - offset for t in r.token_times_s], inp=r.input_tokens,
                    exact=r.token_times_exact, n_out=r.output_tokens,
                    done=None if r.completed_s is None else r.completed_s - offset, cls=r.request_class) for r in rs]
    iv = timeline_intervals(tl, ["GPU-a"], wall0, wall0 + span + 2.0, window_j)
    block = per_request_energy(perf_rs, iv, clock_offset_s=wall0 + offset, prefill_weight=weight)
    assert block.conservation_rel_error < 1e-9
    e = attribute(perf_rs, iv, clock_offset_s=wall0 + offset, prefill_weight=weight)
    assert abs(e.sum() - window_j) / window_j < 1e-9 and (e >= 0).all()
    assert block.energy_j.n == n


def test_per_request_block_fit_and_classes():
    # energy exactly 2 + 0.01 * input + 0.5 * output per request: one interval per request, disjoint in time
    rs, edges, energy = [], [0.0], []
    rng = random.Random(3)
    for i in range(30):
        inp, out = rng.randint(10, 500), rng.randint(2, 60)
        t0 = 10.0 * i
        rs.append(_res(i, t0, list(np.linspace(t0 + 1, t0 + 9, out)), inp=inp, cls="long" if inp > 250 else "short"))
        edges.append(t0 + 10.0)
        energy.append(2 + 0.01 * inp + 0.5 * out)
    block = per_request_energy(rs, Intervals(np.array(edges), np.array(energy), "counter"))
    assert block.fit.intercept_j == pytest.approx(2.0) and block.fit.per_input_token_j == pytest.approx(0.01)
    assert block.fit.per_output_token_j == pytest.approx(0.5) and block.fit.r2 == pytest.approx(1.0)
    assert block.energy_j.median == pytest.approx(float(np.median(energy)))
    assert set(block.by_class) == {"long", "short"}
    assert block.by_class["long"].requests + block.by_class["short"].requests == 30
    # a length that does not vary is left out of the fit
    fit = length_fit([1.0, 2.0, 3.0], [5, 5, 5], [1, 2, 3])
    assert fit.per_input_token_j is None and fit.per_output_token_j == pytest.approx(1.0)


def test_compare_a_class_in_the_mix_with_the_class_alone():
    def rec(short_j, occ):
        return {"status": "ok", "steady_state": {"running_batch_mean": occ},
                "per_request_energy": {"by_class": {"short": {"energy_j_mean": short_j}}}}
    mix = [rec(10.0, 7.0), rec(12.0, 7.5)]
    alone = [rec(10.5, 8.0), {"status": "failed"}, rec(11.5, 8.0)]
    c = compare_class_alone(mix, alone, "short")
    assert (c.mix_j_per_request, c.alone_j_per_request, c.mix_trials, c.alone_trials) == (11.0, 11.0, 2, 2)
    assert c.ratio == pytest.approx(1.0) and c.rel_diff == pytest.approx(0.0)
    assert c.mix_running_batch_mean == pytest.approx(7.25) and c.alone_running_batch_mean == 8.0
    with pytest.raises(ValueError, match="'long' missing from the mixed"):
        compare_class_alone(mix, alone, "long")


# ------------------------------------------------------------------ SLO goodput
def test_slo_attainment_and_goodput():
    rs = [_res(0, 0.0, [0.2, 0.3, 0.4]),     # ttft 0.2, tpot 0.1: meets
          _res(1, 0.0, [0.8, 0.9]),          # ttft 0.8: misses
          _res(2, 0.0, [0.1, 0.5, 0.9]),     # tpot 0.4: misses
          _res(3, 0.0, [0.3])]               # one token: no TPOT, meets
    got = slo_fields({"ttft_s": 0.5, "tpot_s": 0.2}, rs, duration_s=2.0, energy_j=400.0)
    assert (got["requests"], got["requests_met"], got["attainment"]) == (4, 2, 0.5)
    assert got["goodput_req_s"] == pytest.approx(1.0)
    # goodput per watt: (1 req/s) / (200 W mean power) = 2 requests / 400 J
    assert got["goodput_req_per_j"] == pytest.approx(1.0 / 200.0)
    assert slo_fields({"tpot_s": 0.2}, rs, 2.0, None)["requests_met"] == 3
    assert slo_fields(None, rs, 2.0, 400.0) is None


def test_slo_and_shapes_validate_with_clear_messages():
    with pytest.raises(ValueError, match="needs ttft_s, tpot_s or both"):
        WorkloadConfig(slo={})
    with pytest.raises(ValueError, match="greater than 0"):
        WorkloadConfig(slo={"ttft_s": -1})
    with pytest.raises(ValueError, match="shares sum to 0.9"):
        WorkloadConfig(max_output_tokens=8, classes=[{"name": "a", "share": 0.4, "input_tokens": 4, "output_tokens": 4},
                                                     {"name": "b", "share": 0.5, "input_tokens": 4, "output_tokens": 4}])
    with pytest.raises(ValueError, match="max_output_tokens to at least 512"):
        WorkloadConfig(classes=[{"name": "a", "share": 1, "input_tokens": 4, "output_tokens": 512}])
    with pytest.raises(ValueError, match="'uniform' needs low, high"):
        WorkloadConfig(output_tokens={"distribution": "uniform"})
    with pytest.raises(ValueError, match="takes value, not mean"):
        WorkloadConfig(output_tokens={"distribution": "fixed", "value": 3, "mean": 4})
    with pytest.raises(ValueError, match="forced lengths"):
        WorkloadConfig(force_output_tokens=False, output_tokens={"distribution": "fixed", "value": 3})


# ------------------------------------------------------------------ workload shapes
@pytest.mark.parametrize("dist", [
    {"distribution": "fixed", "value": 7},
    {"distribution": "uniform", "low": 5, "high": 50},
    {"distribution": "normal", "mean": 100.0, "std": 30.0},
    {"distribution": "lognormal", "mean": 100.0, "std": 80.0},
    {"distribution": "choice", "values": [16, 256], "weights": [3, 1]},
])
def test_output_lengths_are_seeded_clipped_and_follow_the_distribution(dist):
    xs = draw_output_lengths(dist, 4000, seed=5, max_output_tokens=200)
    assert xs == draw_output_lengths(dist, 4000, seed=5, max_output_tokens=200)
    assert xs != draw_output_lengths(dist, 4000, seed=6, max_output_tokens=200) or dist["distribution"] == "fixed"
    assert min(xs) >= 1 and max(xs) <= 200
    kind = dist["distribution"]
    if kind == "fixed":
        assert set(xs) == {7}
    elif kind == "uniform":
        assert set(xs) == set(range(5, 51))
    elif kind == "normal":
        assert np.mean(xs) == pytest.approx(100.0, rel=0.03)
    elif kind == "lognormal":
        unclipped = draw_output_lengths(dist, 4000, seed=5, max_output_tokens=10**6)
        assert np.mean(unclipped) == pytest.approx(100.0, rel=0.06)
    else:
        assert set(xs) == {16, 200} and xs.count(16) / len(xs) == pytest.approx(0.75, abs=0.03)


class _Tok:
    vocab_size = 1000

    def decode(self, ids):
        return " ".join(str(i) for i in ids)

    def encode(self, text):
        return [int(x) for x in text.split()] if text.strip() and text.split()[0].isdigit() else list(range(len(text)))


def test_classes_shape_prompts_and_lengths(tmp_path):
    classes = [{"name": "short", "share": 0.5, "input_tokens": 4, "output_tokens": 3},
               {"name": "long", "share": 0.5, "input_tokens": 20, "output_tokens": 9}]
    assert [c["name"] for c in assign_classes(classes, 5, 0)].count("short") in (2, 3)
    wl = {"dataset": "synthetic", "prompts": 10, "max_output_tokens": 9, "classes": classes}
    reqs = build_requests(wl, _Tok())
    assert reqs == build_requests(wl, _Tok())
    assert sorted(r.request_class for r in reqs) == ["long"] * 5 + ["short"] * 5
    for r in reqs:
        want_in, want_out = (4, 3) if r.request_class == "short" else (20, 9)
        assert len(r.prompt_token_ids) == want_in and r.max_output_tokens == want_out
    # dataset prompts are cut to the class's input length
    path = tmp_path / "p.jsonl"
    path.write_text("".join('{"prompt": "%s"}\n' % ("x" * k) for k in (30, 2, 50)))
    reqs = build_requests({**wl, "dataset": str(path), "prompts": 4}, _Tok())
    for r in reqs:
        assert len(r.prompt_token_ids) <= (4 if r.request_class == "short" else 20)
    # a length distribution without classes
    reqs = build_requests({"dataset": "synthetic", "prompts": 6, "input_tokens": 3, "max_output_tokens": 50,
                           "output_tokens": {"distribution": "uniform", "low": 10, "high": 40}}, _Tok())
    assert all(10 <= r.max_output_tokens <= 40 and r.request_class is None for r in reqs)


# ------------------------------------------------------------------ the study file, the table, the summary
def test_study_with_classes_and_slo_plans_and_errors_name_the_yaml_path(write_study):
    from joulebench.config import load_study
    from joulebench.errors import StudyError
    from joulebench.study.plan import build_plan

    from .conftest import tiny_study

    classes = [{"name": "short", "share": 0.5, "input_tokens": 4, "output_tokens": 2},
               {"name": "long", "share": 0.5, "input_tokens": 8, "output_tokens": 4}]
    wl = {"dataset": "synthetic", "prompts": 8, "max_output_tokens": 4, "classes": classes,
          "slo": {"ttft_s": 0.5, "tpot_s": 0.05}}
    plan = build_plan(load_study(write_study(tiny_study(backend="vllm", engine={"mode": "served"}, workload=wl))))
    params = plan.configs[0].params
    assert params["classes"][1]["name"] == "long" and params["slo"] == {"ttft_s": 0.5, "tpot_s": 0.05}
    # without shapes the parameters keep their earlier keys (configuration ids unchanged)
    plain = build_plan(load_study(write_study(tiny_study()))).configs[0].params
    assert not {"classes", "slo", "output_tokens"} & set(plain)
    # transformers runs static batches: per-request lengths are refused at plan time
    with pytest.raises(StudyError, match="needs mode: served or backend: vllm"):
        build_plan(load_study(write_study(tiny_study(workload=wl))))
    with pytest.raises(StudyError) as err:
        build_plan(load_study(write_study(tiny_study(backend="vllm", engine={"mode": "served"},
                                                     workload={**wl, "slo": {"ttft": 0.5}}))))
    assert "workload.slo" in str(err.value)


def test_served_figures_reach_the_table_and_the_one_summary():
    from joulebench.analysis.summary import summarize_records

    def rec(i, goodput):
        return {"trial_id": f"c-r{i}", "config_id": "c", "status": "ok", "params": {"mode": "served"},
                "steady_state": {"batch": 8, "running_batch_mean": 7.5},
                "per_request_energy": {"energy_j": {"median": 2.0 + i, "p90": 4.0, "p99": 5.0, "mean": 2.5, "n": 9},
                                       "conservation_rel_error": 1e-16},
                "slo": {"attainment": 0.9, "goodput_req_s": 3.0, "goodput_req_per_j": goodput}}
    from joulebench.results.table import flatten_record

    row = flatten_record(rec(0, 0.01))
    assert (row["request_energy_j_median"], row["goodput_req_per_j"], row["steady_running_batch_mean"]) == (2.0, 0.01, 7.5)
    assert "per_request_energy" not in row and "slo" not in row
    assert "goodput_req_per_j" not in flatten_record({"trial_id": "x", "config_id": "c", "status": "ok"})
    (c,) = summarize_records([rec(0, 0.01), rec(1, 0.03)])
    assert c.mean("goodput_req_per_j") == pytest.approx(0.02) and c.mean("request_energy_j_median") == 2.5
