"""The device string parsed once (config/device.py): every accepted form, clear errors, NVML resolution,
and the GPU fence (runner_options.gpus)."""
from __future__ import annotations

import json

import pytest

from joulebench.config import load_study
from joulebench.config.device import (DeviceKind, DeviceSpec, DeviceSpecError, fence_problems, fence_violations)
from joulebench.devices import resolve_gpus
from joulebench.errors import DeviceError, StudyError, StudyErrors
from joulebench.runners.ray import gpus_needed
from joulebench.study.plan import build_plan
from joulebench.testing.fake_nvml import FakeNVML

from .conftest import tiny_study

UUIDS = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000",
         "GPU-cccccccc-0000-0000-0000-000000000000"]


@pytest.mark.parametrize("text,kind,ordinals", [
    ("auto", DeviceKind.AUTO, ()), ("cpu", DeviceKind.CPU, ()), ("cuda", DeviceKind.CUDA, ()),
    ("cuda:0", DeviceKind.CUDA, (0,)), ("cuda:3", DeviceKind.CUDA, (3,)), ("cuda:0,1", DeviceKind.CUDA, (0, 1)),
    ("cuda:2,0,1", DeviceKind.CUDA, (2, 0, 1)), ("cuda:10", DeviceKind.CUDA, (10,)),
])
def test_every_accepted_form(text, kind, ordinals):
    spec = DeviceSpec.parse(text)
    assert spec.kind is kind and spec.ordinals == ordinals
    assert str(spec) == text            # kept as written: it is part of a configuration's id


def test_none_and_absent_mean_auto():
    assert DeviceSpec.parse(None).is_auto
    assert DeviceSpec.of({}).is_auto
    assert DeviceSpec.of({"device": "cuda:1"}).ordinals == (1,)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:a", "cuda:0,", "cuda:-1", "cpu:0", "auto:1", "CUDA",
                                 " cuda", "cuda:0, 1", "cuda:0,0", "", "mps"])
def test_bad_forms_name_the_value(bad):
    with pytest.raises(DeviceSpecError) as ei:
        DeviceSpec.parse(bad)
    assert repr(bad) in str(ei.value)


@pytest.mark.parametrize("bad", [0, 1.5, ["cuda:0"], True])
def test_non_strings_are_refused(bad):
    with pytest.raises(DeviceSpecError, match="not a string"):
        DeviceSpec.parse(bad)


def test_ordinals_count_and_torch_device():
    cpu, auto, cuda, two = (DeviceSpec.parse(x) for x in ("cpu", "auto", "cuda", "cuda:2,3"))
    assert cpu.intended_ordinals(True) == [] and auto.intended_ordinals(False) == []
    assert auto.intended_ordinals(True) == [0] and cuda.intended_ordinals(True) == [0]
    assert two.intended_ordinals(False) == [2, 3]
    assert [s.count(gpus_present=True) for s in (cpu, auto, cuda, two)] == [0, 1, 1, 2]
    assert [s.count(gpus_present=False) for s in (cpu, auto, cuda, two)] == [0, 0, 1, 2]
    assert auto.torch_device(cuda_available=False) == "cpu"
    assert auto.torch_device(cuda_available=True) == "cuda:0"
    assert cuda.torch_device(cuda_available=True) == "cuda:0"
    assert two.torch_device(cuda_available=True) == "cuda:2"
    assert str(cuda.resolved(cuda_available=True)) == "cuda:0"
    assert str(auto.resolved(cuda_available=False)) == "cpu"


def test_renumbered_for_a_process_that_sees_only_its_gpus():
    assert str(DeviceSpec.parse("cuda:2,3").renumbered()) == "cuda:0,1"
    assert str(DeviceSpec.parse("cuda:1").renumbered()) == "cuda:0"
    assert [str(DeviceSpec.parse(x).renumbered()) for x in ("auto", "cpu", "cuda")] == ["auto", "cpu", "cuda"]


def test_ray_asks_for_the_gpus_the_spec_counts():
    assert gpus_needed(None, cluster_has_gpus=True) == 1
    with pytest.raises(DeviceSpecError):
        gpus_needed("gpu0", cluster_has_gpus=True)


def _fake_gpus(n=3):
    fake = FakeNVML([{"uuid": u} for u in UUIDS[:n]])
    return lambda sel: resolve_gpus(sel, nvml=fake, cuda_visible_devices=None)


def test_resolution_gives_ordinals_and_uuids():
    gpus = _fake_gpus()
    r = DeviceSpec.parse("cuda:2,0").resolve(nvml_gpus=gpus)
    assert r.ordinals == (2, 0) and r.uuids == (UUIDS[2], UUIDS[0]) and r.count == 2
    assert DeviceSpec.parse("auto").resolve(nvml_gpus=gpus).uuids == (UUIDS[0],)
    assert DeviceSpec.parse("cpu").resolve(nvml_gpus=gpus).uuids == ()
    no_gpu = FakeNVML([])
    assert DeviceSpec.parse("auto").resolve(
        nvml_gpus=lambda sel: resolve_gpus(sel, nvml=no_gpu, cuda_visible_devices=None)).ordinals == ()
    with pytest.raises(DeviceError, match="GPU 5 was asked for"):
        DeviceSpec.parse("cuda:5").resolve(nvml_gpus=gpus)


def test_study_and_sweep_devices_are_validated_with_their_path(write_study):
    with pytest.raises(StudyError) as ei:
        load_study(write_study(tiny_study(device="cuda:x")))
    assert "device" in str(ei.value) and "'cuda:x'" in str(ei.value)
    with pytest.raises(StudyError) as ei:
        build_plan(load_study(write_study(tiny_study(sweep={"device": ["cpu", "gpu"]}))))
    assert "sweep.device[1]" in str(ei.value) and "'gpu'" in str(ei.value)


# ---------------------------------------------------------------------- the fence
def test_fence_of_ordinals_refuses_explicit_gpus_outside_it_at_plan(write_study, tmp_path, monkeypatch):
    fake = tmp_path / "nvml.json"       # a host with 3 GPUs: the devices asked for exist
    fake.write_text(json.dumps({"gpus": [{"power_w": 70.0} for _ in range(3)]}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    study = tiny_study(sweep={"device": ["cuda:1", "cuda:0,2"]}, runner_options={"gpus": [0, 1]})
    with pytest.raises((StudyError, StudyErrors)) as ei:
        build_plan(load_study(write_study(study)))
    text = str(ei.value)
    assert "runner_options.gpus" in text and "cuda:0,2" in text and "uses GPU 2" in text
    assert "cuda:1'" not in text
    ok = tiny_study(sweep={"device": ["cpu", "cuda:1"]}, runner_options={"gpus": [1]})
    assert len(build_plan(load_study(write_study(ok))).configs) == 2


def test_fence_pure_and_resolved_checks():
    specs = [("a", DeviceSpec.parse("cuda:0")), ("b", DeviceSpec.parse("auto"))]
    assert fence_problems(None, specs) == []
    assert fence_problems([1], specs) == ["a: device 'cuda:0' uses GPU 0, outside runner_options.gpus [1]"]
    assert fence_problems([UUIDS[1]], specs) == []   # UUIDs: only after resolution
    gpus = _fake_gpus()
    resolved = [(w, s.resolve(nvml_gpus=gpus)) for w, s in specs]
    assert len(fence_violations([UUIDS[1]], resolved, nvml_gpus=gpus)) == 2
    assert fence_violations([UUIDS[0]], resolved, nvml_gpus=gpus) == []
    assert fence_violations([0], resolved, nvml_gpus=gpus) == []
    (msg,) = fence_violations([2, UUIDS[1]], resolved[1:], nvml_gpus=gpus)
    assert msg.startswith("b: device 'auto' uses GPU 0 (GPU-aaaaaaaa")


def test_fence_is_enforced_at_run_for_auto_and_uuids(write_study, tmp_path, monkeypatch):
    from joulebench.study.run import run_study

    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps({"gpus": [{"uuid": u} for u in UUIDS[:2]]}))
    monkeypatch.setenv("JOULEBENCH_FAKE_NVML", str(fake))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for gpus in ([1], [UUIDS[1]]):
        study = tiny_study("fenced", device="auto", runner_options={"gpus": gpus})
        with pytest.raises(StudyError) as ei:
            run_study(write_study(study), out=tmp_path / f"r{len(str(gpus))}", quiet=True, report=False)
        assert "runner_options.gpus" in str(ei.value) and UUIDS[0] in str(ei.value)
        assert not (tmp_path / f"r{len(str(gpus))}" / "manifest.json").exists()   # refused before anything ran
