"""Issue 8 on the NVML fake: a trial's GPUs under CUDA_VISIBLE_DEVICES permutations, per-device energy and
totals, and visible-but-unused GPUs reported apart (never summed); invisible GPUs not reported at all.

The same checks ran on two real H200s: benchmarks/multigpu.py, benchmarks/results/multigpu-*.json.
"""
from __future__ import annotations

import json
import time

import pytest

import joulebench
from joulebench.devices import resolve_gpus
from joulebench.devices.nvml import FAKE_ENV

# Four GPUs drawing 100, 200, 300, 400 W: a device's power identifies it.
U = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-0000-0000-0000-000000000000" for i in range(1, 5)]


@pytest.fixture
def four(tmp_path, monkeypatch):
    spec = tmp_path / "fake_nvml.json"
    spec.write_text(json.dumps({"epoch_unix": time.time() - 10,
                                "gpus": [{"uuid": u, "power_w": 100.0 * (i + 1)} for i, u in enumerate(U)]}))
    monkeypatch.setenv(FAKE_ENV, str(spec))


@pytest.mark.parametrize("cvd, named, metered, unused", [
    ("2,0", [0, 1], [U[2], U[0]], []),                 # device: cuda:0,1 under a permutation
    ("3,1,0", [2, 0], [U[0], U[3]], [U[1]]),           # ordinals out of order, one visible GPU left over
    (f"{U[1]},{U[3]}", [1], [U[3]], [U[1]]),           # by UUID
    (None, [1, 2], [U[1], U[2]], [U[0], U[3]]),        # everything visible
])
def test_named_gpus_metered_and_the_rest_apart(four, monkeypatch, cvd, named, metered, unused):
    if cvd is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    assert [g.info.uuid for g in resolve_gpus(named)] == metered
    with joulebench.measure(devices=named, sampler=False, cpu=False, sync=None) as m:
        time.sleep(1.0)
    r = m.result
    per = {d.info.uuid: d.energy_j for d in r.window.devices}
    assert list(per) == metered
    assert r.energy_j == pytest.approx(sum(per.values()), rel=1e-12)         # per-device energies sum to the total
    for u, e in per.items():                                                   # each is its own GPU's draw
        assert e / r.duration_s == pytest.approx(100.0 * (U.index(u) + 1), rel=0.15)
    got_unused = [d.info.uuid for d in (r.unused.devices if r.unused else ())]
    assert got_unused == unused                                                # visible, not named: apart
    assert not set(got_unused) & set(per)
    d = r.to_dict()
    assert d["energy_j"] == pytest.approx(sum(x["energy_j"] for x in d["devices"]))
    assert {x["uuid"] for x in d["unused_devices"]} == set(unused)
