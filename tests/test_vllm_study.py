"""A real vLLM study on CPU through the engine-environment runner: ``joulebench run`` starts the worker
with the vLLM environment's interpreter; offline and served modes; records on disk."""
from __future__ import annotations

import json

import pytest

from .conftest import FAST_MEASUREMENT, run_cli
from .test_vllm_backend import MODEL, require_engine

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def read_records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*.json"))]


def check_record(rec, *, n_out: int, prompts: int):
    assert rec["status"] == "ok", rec.get("error")
    assert rec["passes"] >= 1 and rec["requests"] == prompts * rec["passes"]
    if rec["params"]["mode"] == "served":
        # primary figures come from the steady state; the whole window keeps every token
        whole, steady = rec["whole_window"], rec["steady_state"]
        assert whole["output_tokens"] == n_out * rec["requests"]     # forced lengths, exactly
        assert steady["segments"] >= 1 and 0 < steady["output_tokens"] < whole["output_tokens"]
        # B: the smaller of the engine's max_num_seqs (vLLM) and the closed loop's concurrency
        params = rec["params"]
        assert steady["batch"] == min(x for x in (params.get("max_num_seqs"), params.get("concurrency")) if x)
        assert steady["running_batch_mean"] > 0
        assert steady["definition"].startswith("B-th first token")
        assert rec["output_tokens"] == steady["output_tokens"]
        assert 0 < steady["duration_s"] < whole["duration_s"]
    else:
        assert rec["output_tokens"] == n_out * rec["requests"]       # forced lengths, exactly
        assert rec["steady_state"] is None
    assert rec["input_tokens"] > 0 and rec["throughput_tok_s"] > 0
    for key in ("ttft_s", "tpot_s", "latency_s"):
        assert rec[key]["n"] > 0 and rec[key]["median"] > 0, key
    # every request has TTFT < latency, so every quantile of TTFT is below the same quantile of latency
    for q in ("median", "p90", "p99"):
        assert rec["ttft_s"][q] < rec["latency_s"][q], q


def test_vllm_study_offline_and_served_through_engine_environment(write_study, tmp_path):
    py = require_engine("vllm")
    study = {
        "name": "vllm-e2e", "model": MODEL, "backend": "vllm",
        "engine": {"dtype": "bfloat16", "max_num_seqs": 4},
        "workload": {"dataset": "synthetic", "prompts": 6, "input_tokens": 8, "max_output_tokens": 8},
        # served: B = max_num_seqs = 4 needs N >= 2B = 8 requests for a steady window
        "experiments": [{"mode": "offline", "batch_size": 3}, {"mode": "served", "concurrency": 2, "prompts": 8}],
        "repeats": 1, "measurement": FAST_MEASUREMENT, "runner": "process",
        "runner_options": {"environments": {"vllm": py}, "timeout_s": 900},
    }
    out = tmp_path / "out"
    proc = run_cli("run", write_study(study), "--out", out, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = read_records(out)
    assert len(records) == 2
    by_mode = {r["params"]["mode"]: r for r in records}
    for mode, rec in by_mode.items():
        check_record(rec, n_out=8, prompts=8 if mode == "served" else 6)
        # a served warm-up pass sends one running batch (min(max_num_seqs 4, concurrency 2)), not the workload
        assert rec["warmup"]["requests_per_pass"] == (2 if mode == "served" else 6)
        assert rec["params"]["backend"] == "vllm"
        assert rec["environment"], "engine environment versions missing"
        notes = rec["load_notes"]
        assert notes["mode"] == mode and notes["pass_isolation"] == "cache_salt"   # a fresh cache scope per pass
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_vllm_served_study_with_fake_gpu_attributes_energy_to_requests_and_classes(write_study, tmp_path, monkeypatch):
    """A served vLLM study on CPU metered through the fake NVML: the steady window's fields, per-request energy
    that sums to the window's counter energy, per-class figures of a two-class mix, SLO goodput."""
    py = require_engine("vllm")
    fake = tmp_path / "fake.json"
    # an unquantised counter: on CPU, vLLM streams a tiny model's tokens in bursts, so a pass's steady window
    # lasts only milliseconds (on a GPU it lasts seconds); the live edge readings must still give 300 W x duration
    fake.write_text(json.dumps({"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300.0,
                                          "power_limit_w": 700, "counter_period_s": 0}]}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study = {
        "name": "vllm-attrib", "model": MODEL, "backend": "vllm", "device": "cuda:0",
        "engine": {"dtype": "bfloat16", "max_num_seqs": 2, "mode": "served"},
        "workload": {"dataset": "synthetic", "prompts": 8, "max_output_tokens": 12,
                     "classes": [{"name": "short", "share": 0.5, "input_tokens": 4, "output_tokens": 3},
                                 {"name": "long", "share": 0.5, "input_tokens": 24, "output_tokens": 12}],
                     "slo": {"ttft_s": 60.0, "tpot_s": 10.0}},
        "repeats": 1, "measurement": {**FAST_MEASUREMENT, "min_window_s": 1.0}, "runner": "process",
        "runner_options": {"environments": {"vllm": py}, "timeout_s": 900},
    }
    out = tmp_path / "out"
    proc = run_cli("run", write_study(study), "--out", out, timeout=1500, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("results (mean"):]
    assert "goodput/W" in table and "J/req p50" in table and "J/req p90" in table   # console: served columns
    (rec,) = read_records(out)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["energy_source"] == "nvml-counter" and rec["timeseries"]
    steady, whole = rec["steady_state"], rec["whole_window"]
    assert steady["batch"] == 2 and steady["segments"] >= 1 and steady["running_batch_mean"] > 0
    assert 0 < steady["duration_s"] < whole["duration_s"], steady
    # 300 W over the steady segments, read live at their edges: each read comes a little after its hook's time
    # (about 1 ms here; on a loaded 2-core CI runner once 11.5 ms more at the start edge than at the end, 3.2 % of
    # a 0.36 s window; on a GPU a window lasts seconds). 20 ms of net lag a segment is allowed; a read at the
    # pass's end instead of its steady edges would be off by the tail's whole length.
    assert steady["energy_j"] == pytest.approx(300.0 * steady["duration_s"], rel=0.02, abs=6.0 * steady["segments"])
    assert steady["energy_j"] > 0 and rec["energy_per_output_token_j"] > 0
    assert rec["energy_j"] == steady["energy_j"]
    # forced per-class lengths, exactly: 4 short x 3 + 4 long x 12 tokens per pass
    assert whole["output_tokens"] == rec["passes"] * (4 * 3 + 4 * 12)
    pre = rec["per_request_energy"]
    assert pre["conservation_rel_error"] < 1e-9 and pre["interval_source"] == "counter"
    assert pre["window_energy_j"] == pytest.approx(whole["energy_j"], rel=1e-12)
    assert pre["requests"] == rec["requests"] and pre["intervals"] > 5
    assert abs(pre["timeline_scale"] - 1.0) < 0.2           # the timeline's counter deltas stand for the window
    # the requests trace beside the timeline: the same rule applied again offline gives the record's block
    from joulebench.results.requests import reattribute
    again = reattribute(out / rec["requests_trace"], out / rec["timeseries"])
    assert again.requests == pre["requests"] and again.intervals == pre["intervals"]
    assert again.energy_j.median == pytest.approx(pre["energy_j"]["median"], rel=1e-3)
    assert again.by_class["long"].energy_j_mean == pytest.approx(pre["by_class"]["long"]["energy_j_mean"], rel=1e-3)
    by = pre["by_class"]
    assert set(by) == {"short", "long"} and by["short"]["output_tokens_mean"] == 3.0
    assert by["long"]["energy_j_mean"] > by["short"]["energy_j_mean"]   # 4x the tokens each
    assert pre["fit"]["per_output_token_j"] is not None
    slo = rec["slo"]
    assert slo["attainment"] == 1.0 and slo["requests_met"] == rec["requests"]
    assert slo["goodput_req_per_j"] == pytest.approx(rec["requests"] / whole["energy_j"])
    # the report shows the served figures (the one summary's metrics, present only in served studies)
    html = (out / "report.html").read_text()
    assert "goodput per watt" in html and "energy per request, median (attributed)" in html
