"""The trial record from what a trial measured (worker/record.py): hand-computed figures."""
from __future__ import annotations

import math

import pytest

from joulebench.backends.base import LoadInfo, RequestResult
from joulebench.config.study import MeasurementConfig
from joulebench.devices.base import DeviceInfo
from joulebench.meters.baselines import IdleBaseline
from joulebench.meters.flags import Flag, QualityFlag
from joulebench.meters.window import DeviceEnergy, WindowMeasurement
from joulebench.spec import ErrorKind, ExperimentSpec, TrialSpec
from joulebench.worker.record import (TrialMeasurement, WorkerFacts, analytic_flops, failed_record, idle_w,
                                      percentile_stats, trial_record, unused_device_rows)

GPU = DeviceInfo(index=0, uuid="GPU-a", name="Fake H100", kind="gpu", power_limit_w=700.0)
DEVICE_IDLE = {"power_w": 100.0, "per_device_w": {"GPU-a": 100.0}, "duration_s": 5.0, "measured_at": 1000.0}
LOADED_IDLE = IdleBaseline(power_w=150.0, per_device_w={"GPU-a": 150.0}, duration_s=3.0, measured_at=2000.0)


def _spec(device_idle=DEVICE_IDLE) -> ExperimentSpec:
    return ExperimentSpec(experiment_id="r0-g-a001", study="s", round=1, measurement=MeasurementConfig(),
                          device_idle=device_idle, node={"hostname": "h"},
                          trials=[TRIAL])


TRIAL = TrialSpec(trial_id="c1-r1", config_id="c1", repeat=1, round=1,
                  params={"backend": "transformers", "model": "synthetic:tiny-llama", "device": "cuda:0"})


def _window(energy_j=600.0, duration_s=2.0) -> WindowMeasurement:
    de = DeviceEnergy(GPU, energy_j, "nvml-counter" if energy_j is not None else None, 40.0, 45.0)
    return WindowMeasurement(duration_s=duration_s, energy_j=energy_j,
                             energy_source="nvml-counter" if energy_j is not None else None,
                             devices=(de,), flags=(), start_time_s=0.0, end_time_s=duration_s)


def _results() -> list[RequestResult]:
    # two requests, 10 prompt + 20 output tokens each; tokens every 0.1 s after a 0.5 s first token
    return [RequestResult(index=i, input_tokens=10, output_tokens=20, submit_s=0.0,
                          token_times_s=[0.5 + 0.1 * k for k in range(20)]) for i in range(2)]


def _measured(**kw) -> TrialMeasurement:
    base = dict(window=_window(), cpu_window=None, results=_results(), passes=2, device_uuids=["GPU-a"],
                started_at=10.0, finished_at=20.0, peak_memory_bytes=123, nvml_memory_used_bytes=456,
                flags=[QualityFlag(Flag.SYNTHETIC_WEIGHTS, "synthetic:tiny-llama")])
    base.update(kw)
    return TrialMeasurement(**base)


FACTS = WorkerFacts(worker_id="r0-g-a000", environment={"python": "3"}, loaded_idle=LOADED_IDLE,
                    load_info=LoadInfo(load_s=1.5, weights_bytes=1000, parameters=250), load_energy_j=42.0)


def test_energy_above_idle_and_per_token_figures():
    rec = trial_record(_spec(), TRIAL, FACTS, _measured())
    # 600 J over 2 s; 40 output + 20 input tokens in 2 requests
    assert rec["status"] == "ok" and rec["energy_j"] == 600.0 and rec["mean_power_w"] == 300.0
    assert rec["energy_above_device_idle_j"] == pytest.approx(600.0 - 100.0 * 2)        # 400
    assert rec["energy_above_loaded_idle_j"] == pytest.approx(600.0 - 150.0 * 2)        # 300
    assert rec["energy_per_output_token_j"] == pytest.approx(15.0)
    assert rec["energy_above_device_idle_per_output_token_j"] == pytest.approx(10.0)
    assert rec["energy_above_loaded_idle_per_output_token_j"] == pytest.approx(7.5)
    assert rec["energy_per_request_j"] == pytest.approx(300.0)
    assert rec["energy_per_token_j"] == pytest.approx(10.0)
    assert (rec["output_tokens"], rec["input_tokens"], rec["requests"], rec["passes"]) == (40, 20, 2, 2)
    assert rec["throughput_tok_s"] == pytest.approx(20.0) and rec["input_throughput_tok_s"] == pytest.approx(10.0)
    assert rec["requests_per_s"] == pytest.approx(1.0)
    assert rec["ttft_s"]["median"] == pytest.approx(0.5) and rec["itl_s"]["n"] == 2 * 19
    assert rec["itl_s"]["median"] == pytest.approx(0.1)
    (dev,) = rec["devices"]
    assert (dev["device_idle_w"], dev["loaded_idle_w"], dev["mean_power_w"]) == (100.0, 150.0, 300.0)
    assert rec["baselines"] == {"device_idle_w": 100.0, "loaded_idle_w": 150.0, "device_idle_measured_at": 1000.0,
                                "device_idle_duration_s": 5.0, "loaded_idle_duration_s": 3.0,
                                "loaded_idle_measured_at": 2000.0}
    assert (rec["load_s"], rec["weights_bytes"], rec["load_energy_j"]) == (1.5, 1000, 42.0)
    assert rec["model"]["parameters"] == 250 and rec["worker_id"] == "r0-g-a000" and rec["round"] == 1
    assert rec["node"] == {"hostname": "h"} and rec["flags"][0]["code"] == "synthetic_weights"
    assert rec["steady_state"] is None and rec["whole_window"] is None


def test_served_steady_state_replaces_the_whole_window():
    steady = {"segments": 1, "duration_s": 1.0, "energy_j": 250.0, "output_tokens": 30, "definition": "d"}
    rec = trial_record(_spec(), TRIAL, FACTS, _measured(steady=steady))
    assert (rec["duration_s"], rec["energy_j"], rec["output_tokens"]) == (1.0, 250.0, 30)
    assert rec["input_tokens"] == 15                       # 20 input tokens x 30/40 of the output
    assert rec["energy_above_device_idle_j"] == pytest.approx(250.0 - 100.0 * 1.0)
    assert rec["energy_above_device_idle_per_output_token_j"] == pytest.approx(5.0)
    assert rec["throughput_tok_s"] == pytest.approx(30.0) and rec["mean_power_w"] == pytest.approx(250.0)
    assert rec["whole_window"] == {"duration_s": 2.0, "energy_j": 600.0, "output_tokens": 40, "input_tokens": 20}
    assert rec["steady_state"] == steady
    # the device rows keep each device's energy over the whole window, and their mean power is over it too
    # (it was the whole window's energy over the steady duration: 1.5x the card's power here, 987 W on a 700 W H100)
    (dev,) = rec["devices"]
    assert dev["energy_j"] == 600.0 and dev["mean_power_w"] == pytest.approx(300.0)
    # no GPU measured: the steady state's counter energy is not used
    rec = trial_record(_spec(), TRIAL, FACTS, _measured(steady=steady, device_uuids=[]))
    assert rec["energy_j"] is None and rec["energy_per_output_token_j"] is None and rec["duration_s"] == 1.0
    # an empty steady state (no segment time) keeps the whole window, and says so
    rec = trial_record(_spec(), TRIAL, FACTS, _measured(steady={**steady, "duration_s": 0.0}))
    assert rec["duration_s"] == 2.0 and rec["energy_j"] == 600.0 and rec["whole_window"]["output_tokens"] == 40


def test_missing_figures_propagate_as_none():
    no_refs = WorkerFacts(worker_id="w")
    rec = trial_record(_spec(device_idle=None), TRIAL, no_refs, _measured(window=_window(energy_j=None)))
    for k in ("energy_j", "energy_above_device_idle_j", "energy_above_loaded_idle_j", "energy_per_output_token_j",
              "energy_above_device_idle_per_output_token_j", "energy_above_loaded_idle_per_output_token_j",
              "energy_per_request_j", "energy_per_token_j", "mean_power_w", "load_s", "load_energy_j"):
        assert rec[k] is None, k
    assert rec["throughput_tok_s"] == pytest.approx(20.0)     # speed does not need a meter
    assert rec["baselines"]["device_idle_w"] is None and rec["baselines"]["loaded_idle_measured_at"] is None
    assert rec["devices"][0]["mean_power_w"] is None and rec["environment"] == {}
    # energy without idle references: gross figures only
    rec = trial_record(_spec(device_idle=None), TRIAL, no_refs, _measured())
    assert rec["energy_per_output_token_j"] == pytest.approx(15.0) and rec["energy_above_device_idle_j"] is None
    # no output at all: nothing per token, no throughput over a zero window
    rec = trial_record(_spec(), TRIAL, FACTS, _measured(results=[], window=_window(duration_s=0.0)))
    assert rec["energy_per_output_token_j"] is None and rec["energy_per_request_j"] is None
    assert rec["throughput_tok_s"] is None and rec["ttft_s"] is None


def test_idle_power_sums_the_measured_devices_or_gives_none():
    per = {"GPU-a": 100.0, "GPU-b": 60.0, "GPU-c": None}
    assert idle_w(per, ["GPU-a", "GPU-b"]) == 160.0
    assert idle_w(per, ["GPU-a", "GPU-c"]) is None        # one device without a reference
    assert idle_w(per, ["GPU-a", "GPU-x"]) is None
    assert idle_w(per, []) is None and idle_w(None, ["GPU-a"]) is None


def test_failed_record_and_unused_devices():
    rec = failed_record(_spec(), TRIAL, FACTS, "RuntimeError: boom", ErrorKind.ERROR, finished_at=30.0)
    assert (rec["status"], rec["error"], rec["error_kind"], rec["finished_at"]) == (
        "failed", "RuntimeError: boom", "error", 30.0)
    assert rec["energy_j"] is None and rec["params"] == TRIAL.params and rec["experiment_id"] == "r0-g-a001"
    (row,) = unused_device_rows(_window(energy_j=140.0, duration_s=2.0))
    assert row == {"index": 0, "uuid": "GPU-a", "name": "Fake H100", "energy_j": 140.0, "mean_power_w": 70.0}


def test_percentiles_and_analytic_flops():
    s = percentile_stats([1.0, 2.0, 3.0, None, math.nan])
    assert (s["median"], s["mean"], s["n"]) == (2.0, 2.0, 3)
    assert percentile_stats([None]) is None
    # h=4, i=8, L=1, 2 heads of 2: per layer 4*2*2*2 + 2*4*2*2 + 3*4*8 = 160; one request P=1, O=1:
    # 2*160*2 + 4*1*4*(2*3/2) + 2*4*10*1 = 640 + 48 + 80
    cfg = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
           "vocab_size": 10}
    one = [RequestResult(index=0, input_tokens=1, output_tokens=1, submit_s=0.0)]
    assert analytic_flops(cfg, one)[0] == pytest.approx(768.0)
    assert analytic_flops({}, one)[0] is None


def test_records_name_the_hosts_gpu_index_inside_a_container():
    """A container sees its one GPU as index 0; the spec's host GPUs (index + UUID) give the host's index."""
    from joulebench.spec import GpuRef

    plain = trial_record(_spec(), TRIAL, FACTS, _measured())
    assert plain["devices"][0]["index"] == 0
    spec = _spec().model_copy(update={"gpus": [GpuRef(index=3, uuid="GPU-a")], "worker_device": "cuda:0"})
    rec = trial_record(spec, TRIAL, FACTS, _measured())
    assert rec["devices"][0]["index"] == 3 and rec["devices"][0]["uuid"] == "GPU-a"
    assert set(rec) == set(plain)          # the same record shape


def test_served_record_keeps_per_request_energy_and_slo_and_others_keep_their_shape():
    from joulebench.analysis.attribution import Intervals, per_request_energy

    import numpy as np

    results = _results()
    block = per_request_energy(results, Intervals(np.array([0.0, 1.0, 2.5]), np.array([200.0, 400.0]), "counter"))
    trial = TrialSpec(trial_id="c2-r1", config_id="c2", repeat=1, round=1,
                      params={**TRIAL.params, "backend": "vllm", "mode": "served",
                              "slo": {"ttft_s": 0.6, "tpot_s": 0.05}})
    steady = {"segments": 1, "passes": 2, "duration_s": 1.0, "energy_j": 250.0, "output_tokens": 30, "batch": 2,
              "running_batch_mean": 2.0, "definition": "d"}
    rec = trial_record(_spec(), trial, FACTS, _measured(steady=steady,
                                                        per_request_energy=block.model_dump(mode="json")))
    pre = rec["per_request_energy"]
    assert pre["conservation_rel_error"] < 1e-12 and pre["window_energy_j"] == 600.0
    assert pre["energy_j"]["mean"] == pytest.approx(300.0) and pre["requests"] == 2
    # TTFT 0.5 s <= 0.6; TPOT 0.1 s > 0.05: no request meets the SLO
    assert rec["slo"] == {"ttft_s": 0.6, "tpot_s": 0.05, "requests": 2, "requests_met": 0, "attainment": 0.0,
                          "goodput_req_s": 0.0, "goodput_req_per_j": 0.0}
    assert rec["steady_state"]["running_batch_mean"] == 2.0 and rec["whole_window"]["energy_j"] == 600.0
    # a record without them has no such keys (not nulls): earlier records' shape
    plain = trial_record(_spec(), TRIAL, FACTS, _measured())
    assert "per_request_energy" not in plain and "slo" not in plain
    failed = failed_record(_spec(), TRIAL, FACTS, "x", ErrorKind.ERROR, finished_at=1.0)
    assert "per_request_energy" not in failed and "slo" not in failed


def test_load_notes_reach_the_record_with_secrets_masked():
    from dataclasses import replace

    notes = {"mode": "served", "vllm_version": "0.26.0", "pass_isolation": "cache_salt", "server_ready_s": 61.2,
             "command": ["python", "-m", "vllm", "--api-key", "sk-live-123", "--hf-token=hf_abc", "--max-num-seqs", "64"],
             "hf_token": "hf_abc"}
    facts = replace(FACTS, load_info=LoadInfo(load_s=1.5, notes=notes))
    rec = trial_record(_spec(), TRIAL, facts, _measured())
    ln = rec["load_notes"]
    assert (ln["mode"], ln["vllm_version"], ln["pass_isolation"], ln["server_ready_s"]) == \
        ("served", "0.26.0", "cache_salt", 61.2)
    assert ln["command"] == ["python", "-m", "vllm", "--api-key", "[masked]", "--hf-token=[masked]",
                             "--max-num-seqs", "64"]
    assert ln["hf_token"] == "[masked]"
    assert "sk-live-123" not in str(rec) and "hf_abc" not in str(rec)
    assert trial_record(_spec(), TRIAL, FACTS, _measured())["load_notes"] == {}
