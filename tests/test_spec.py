"""The host <-> worker contract (spec.py): round trips, and values equal to the untyped protocol's."""
import json

import pytest
from pydantic import ValidationError

from joulebench.config.study import MeasurementConfig
from joulebench.spec import (RETRYABLE_ERROR_KINDS, ErrorKind, ExperimentSpec, GpuRef, PhaseEvent, TrialEndEvent,
                             TrialSpec, WorkerExit, format_event, parse_event)


def _spec(**kw) -> ExperimentSpec:
    return ExperimentSpec(experiment_id="r0-g-a001", study="s", round=0, measurement=MeasurementConfig(),
                          trials=[TrialSpec(trial_id="c1-r0", config_id="c1", repeat=0, round=0,
                                            params={"backend": "transformers", "model": "m", "device": "cuda:1"})],
                          **kw)


def test_experiment_spec_round_trips_through_json():
    spec = _spec(gpus=[GpuRef(index=1, uuid="GPU-1")], env={"A": "1"})
    back = ExperimentSpec.from_json(spec.to_json())
    assert back == spec
    assert back.backend == "transformers" and back.trial_ids == ["c1-r0"]
    assert json.loads(spec.to_json())["spec_version"] == 1


def test_experiment_spec_rejects_unknown_and_missing_fields():
    data = json.loads(_spec().to_json())
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate({**data, "typo_field": 1})
    del data["trials"]
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate(data)


def test_events_keep_the_wire_format_of_the_untyped_protocol():
    line = format_event(TrialEndEvent(trial_id="t", status="ok"))
    assert line == '@@joulebench {"event": "trial_end", "status": "ok", "trial_id": "t"}'
    assert parse_event(line) == TrialEndEvent(trial_id="t", status="ok")
    # a line written by the previous release (trial_id null) still parses
    old = '@@joulebench {"event": "phase", "phase": "load", "trial_id": null}'
    assert parse_event(old) == PhaseEvent(phase="load")
    assert parse_event("engine chatter") is None
    assert parse_event('@@joulebench {"event": "nonsense"}') is None
    assert parse_event('@@joulebench {"event": "trial_end", "trial_') is None


def test_enum_values_equal_the_strings_and_codes_on_record():
    assert {k.value for k in ErrorKind} == {"error", "crash", "timeout", "interrupted", "infrastructure",
                                             "worker-lost", "gpu-unavailable"}
    assert {k.value for k in RETRYABLE_ERROR_KINDS} == {"interrupted", "infrastructure", "worker-lost"}
    assert ErrorKind.WORKER_LOST == "worker-lost"
    assert [int(c) for c in WorkerExit] == [0, 2, 3, 130, 141]
