"""A served trial's requests trace (results/requests.py): written beside the timeline, read back to the
microsecond, enough to apply the attribution rule again offline; and it travels with the record from a
container (docker merge) and from a Ray node (land_trial)."""
from __future__ import annotations

import json
import random

import pytest

from joulebench.analysis.attribution import per_request_energy, timeline_intervals
from joulebench.results.requests import (read_requests_trace, reattribute, requests_trace_path,
                                         write_requests_trace)
from joulebench.results.store import StudyStore
from joulebench.runners.docker import mounts
from joulebench.runners.ray_task import land_trial
from joulebench.spec import TrialEndEvent, TrialItem

from .test_served_measurement import _random_trace, _timeline

OFFSET = 1.7e9 - 5000.0          # time.time() - time.perf_counter() in the worker


def _trace(seed=3, n=30):
    rs = _random_trace(random.Random(seed), n, 10.0)
    for r in rs:   # on a perf_counter clock (5000 s after boot), as the load generator stamps them
        r.submit_s += 5000.0
        r.token_times_s = [t + 5000.0 for t in r.token_times_s]
        r.completed_s = r.completed_s + 5000.0 if r.completed_s is not None else None
    return rs


def test_trace_round_trips_to_the_microsecond(tmp_path):
    rs = _trace()
    rs[0].completed_s = None
    path = write_requests_trace(rs, tmp_path / requests_trace_path("t1"), clock_offset_s=OFFSET,
                                window_start_s=1.7e9, window_end_s=1.7e9 + 10.0, window_energy_j=4000.0,
                                device_uuids=["GPU-a"])
    assert path.name == "t1.requests.parquet" and path.parent.name == "timeseries"
    back, meta = read_requests_trace(path)
    assert meta["clock_offset_s"] == OFFSET and meta["device_uuids"] == ["GPU-a"]
    assert (meta["window_start_s"], meta["window_end_s"], meta["window_energy_j"]) == (1.7e9, 1.7e9 + 10.0, 4000.0)
    assert len(back) == len(rs)
    for a, b in zip(rs, back):
        assert (a.index, a.input_tokens, a.output_tokens, a.request_class, a.token_times_exact) == \
            (b.index, b.input_tokens, b.output_tokens, b.request_class, b.token_times_exact)
        assert b.submit_s == pytest.approx(a.submit_s, abs=1e-6)
        assert len(b.token_times_s) == len(a.token_times_s)
        assert max((abs(x - y) for x, y in zip(a.token_times_s, b.token_times_s)), default=0.0) <= 1e-6
        assert (b.completed_s is None) == (a.completed_s is None)
    assert back[0].completed_s is None and back[1].completed_s == pytest.approx(rs[1].completed_s, abs=1e-6)


def test_reattribution_reproduces_the_block_and_applies_another_rule(tmp_path):
    rs = _trace()
    tl = _timeline(["GPU-a"], 1.7e9 - 1.0, 1.7e9 + 13.0, seed=3)
    tl_path = tmp_path / "timeseries" / "t1.parquet"
    tl_path.parent.mkdir()
    tl.to_parquet(tl_path)
    start, end, energy = 1.7e9, 1.7e9 + 10.0, 4321.0
    trace = write_requests_trace(rs, tmp_path / requests_trace_path("t1"), clock_offset_s=OFFSET,
                                 window_start_s=start, window_end_s=end, window_energy_j=energy,
                                 device_uuids=["GPU-a"])
    live = per_request_energy(rs, timeline_intervals(tl, ["GPU-a"], start, end, energy), clock_offset_s=OFFSET)
    again = reattribute(trace, tl_path)
    # the same rule on the stored window gives the worker's block (times kept to 1 us)
    assert again.window_energy_j == pytest.approx(energy, rel=1e-12)
    assert again.conservation_rel_error < 1e-9 and again.intervals == live.intervals
    assert again.energy_j.median == pytest.approx(live.energy_j.median, rel=1e-4)
    assert again.energy_j.p90 == pytest.approx(live.energy_j.p90, rel=1e-4)
    # another rule (prefill weighted 3x) moves energy between requests and still conserves it
    heavy = reattribute(trace, tl_path, prefill_weight=3.0)
    assert heavy.prefill_weight == 3.0 and heavy.conservation_rel_error < 1e-9
    assert heavy.energy_j.p90 != pytest.approx(live.energy_j.p90, rel=1e-6)
    # without the timeline the window is one interval
    assert reattribute(trace).intervals == 1


def test_a_file_that_is_not_a_trace_is_refused(tmp_path):
    import pandas as pd

    p = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(p)
    with pytest.raises(ValueError, match="not a joulebench requests trace"):
        read_requests_trace(p)


def _write_trial(root, tid):
    (root / "trials").mkdir(parents=True, exist_ok=True)
    write_requests_trace(_trace(n=4), root / requests_trace_path(tid), clock_offset_s=OFFSET, window_start_s=None,
                         window_end_s=None, window_energy_j=None, device_uuids=[])
    (root / "timeseries" / f"{tid}.parquet").write_bytes(b"timeline")
    (root / "trials" / f"{tid}.json").write_text(json.dumps({"trial_id": tid,
                                                              "requests_trace": requests_trace_path(tid)}))


def test_docker_merge_brings_the_trace_with_the_record(tmp_path):
    study, staging = tmp_path / "study", tmp_path / "staging"
    (study / "trials").mkdir(parents=True)
    (study / "timeseries").mkdir()
    _write_trial(staging / "out", "t1")
    assert mounts.merge(study, staging, "e1", ["t1"]) == ["t1"]
    rec = json.loads((study / "trials" / "t1.json").read_text())
    assert len(read_requests_trace(study / rec["requests_trace"])[0]) == 4
    assert (study / "timeseries" / "t1.parquet").read_bytes() == b"timeline"


def test_ray_land_trial_writes_the_trace_before_the_record(tmp_path):
    node = tmp_path / "node"
    _write_trial(node, "t1")
    store = StudyStore(tmp_path / "study")
    store.create()
    item = TrialItem(event=TrialEndEvent(trial_id="t1", status="ok"),
                     record=json.loads((node / "trials" / "t1.json").read_text()),
                     timeseries=(node / "timeseries" / "t1.parquet").read_bytes(),
                     requests_trace=(node / requests_trace_path("t1")).read_bytes())
    land_trial(store, item)
    assert len(read_requests_trace(store.root / requests_trace_path("t1"))[0]) == 4
    assert (store.trials_dir / "t1.json").is_file()
