"""The whole protocol on a fake GPU (fake NVML at the hardware boundary, real everything else):
energy from the counter on exactly the devices used, the unused visible GPU reported apart."""
from __future__ import annotations

import json

import pytest

from joulebench.study.run import run_study
from joulebench.results.store import StudyStore

from .conftest import tiny_study

pytestmark = pytest.mark.slow


def test_counter_energy_on_the_used_gpu_and_the_idle_one_apart(write_study, tmp_path, monkeypatch):
    spec = {"gpus": [{"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000000", "power_w": 300.0, "power_limit_w": 700},
                     {"uuid": "GPU-bbbbbbbb-0000-0000-0000-000000000000", "power_w": 70.0, "power_limit_w": 700}]}
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(spec))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study = tiny_study("fakegpu", device="auto")
    study["measurement"] = dict(study["measurement"], min_window_s=1.0, loaded_idle_s=0.5, device_idle_s=0.5)
    out = tmp_path / "r"
    res = run_study(write_study(study), out=out, quiet=True, report=False)
    assert res.exit_code == 0
    (rec,) = StudyStore(out).records_by_id().values()
    assert rec["energy_source"] == "nvml-counter"
    assert [d["uuid"] for d in rec["devices"]] == ["GPU-aaaaaaaa-0000-0000-0000-000000000000"]
    # 300 W for the window, within the counter's 100 ms quantisation at both edges
    assert rec["energy_j"] == pytest.approx(300.0 * rec["duration_s"], abs=2 * 0.1 * 300.0)
    assert rec["mean_power_w"] == pytest.approx(300.0, rel=0.1)
    assert rec["baselines"]["device_idle_w"] == pytest.approx(300.0, rel=0.1)
    assert rec["energy_per_output_token_j"] == pytest.approx(rec["energy_j"] / rec["output_tokens"])
    unused = rec["unused_devices"]
    assert [u["uuid"] for u in unused] == ["GPU-bbbbbbbb-0000-0000-0000-000000000000"]
    assert unused[0]["mean_power_w"] == pytest.approx(70.0, rel=0.15)
    assert rec["energy_j"] < 300.0 * rec["duration_s"] + 70.0 * rec["duration_s"] * 0.5  # not summed
    assert rec["timeseries"] and (out / rec["timeseries"]).exists()
    # the device row says what the sampler saw of the GPU over the window
    tl = rec["devices"][0]["timeline"]
    assert tl["samples"] >= 5 and tl["power_w_mean"] == pytest.approx(300.0, rel=0.05)
    assert 0.0 <= tl["power_cap_share"] <= 1.0 and tl["sm_clock_mhz_mean"] is not None

    # the report shows each device's share, and the unused GPU apart
    from joulebench.report.build import build_report

    html = build_report(out).read_text()
    section = html.split('id="devices"', 1)[1].split("<h2", 1)[0]
    assert "GPU-aaaaaaaa-0000-0000-0000-000000000000" in section and "100.0 %" in section
    used_part, unused_part = section.split("did not use", 1)
    assert "GPU-bbbbbbbb" not in used_part and "GPU-bbbbbbbb-0000-0000-0000-000000000000" in unused_part
