"""The host <-> worker contract: what crosses the process (or container, or Ray) boundary.

Pydantic models and enums only, no logic. The orchestrator builds an :class:`ExperimentSpec`,
a runner writes it with :meth:`ExperimentSpec.to_json`, and the worker validates it once
(:meth:`ExperimentSpec.from_json`) and reads typed fields. The worker answers with one
:data:`Event` per line on its stdout (:func:`format_event` / :func:`parse_event`) and ends with
a :class:`WorkerExit` code. Ray's stream items (:data:`RayItem`) carry the same events.

Field names and enum values equal the strings and numbers of the untyped protocol that came
before, so study directories and records written by earlier versions keep working.
"""
from __future__ import annotations

import json
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from joulebench.config.study import MeasurementConfig

SPEC_VERSION = 1
EVENT_PREFIX = "@@joulebench "   # a worker's event lines; everything else on stdout is engine output

# What a container runner tells its worker through the environment (the records keep it).
ENV_ASSIGNED_GPUS = "JOULEBENCH_ASSIGNED_GPUS"      # host GPUs (UUIDs) given to the container
ENV_GPU_PASSTHROUGH = "JOULEBENCH_GPU_PASSTHROUGH"  # a GpuPassthrough value
ENV_CONTAINER_ENGINE = "JOULEBENCH_CONTAINER_ENGINE"  # e.g. "Podman 4.3.1"
ENV_RUNNER = "JOULEBENCH_RUNNER"
ENV_IMAGE = "JOULEBENCH_IMAGE"
ENV_IMAGE_ID = "JOULEBENCH_IMAGE_ID"


class GpuPassthrough(str, Enum):
    """How a container got its GPUs."""
    DEVICE_REQUEST = "device-request"  # an NVIDIA DeviceRequest (Docker with the NVIDIA Container Toolkit)
    DEVICE_NODES = "device-nodes"      # /dev/nvidia* nodes and a read-only bind of the driver folder
    CDI = "cdi"                        # CDI device names (Podman's own API)


class Phase(str, Enum):
    LOAD = "load"
    LOADED_IDLE = "loaded_idle"
    PREFLIGHT = "preflight"
    WARMUP = "warmup"
    THERMAL = "thermal"
    WINDOW = "window"


class TrialStatus(str, Enum):
    OK = "ok"
    FAILED = "failed"


class ErrorKind(str, Enum):
    """Why a trial failed. ``resume`` runs the retryable kinds again by itself."""
    ERROR = "error"                    # the trial's own failure (engine error, bad parameters)
    CRASH = "crash"                    # the worker died during the trial
    TIMEOUT = "timeout"                # the experiment ran past runner_options.timeout_s
    INTERRUPTED = "interrupted"        # Ctrl-C / SIGTERM
    INFRASTRUCTURE = "infrastructure"  # the worker could not start (image, interpreter, container engine)
    WORKER_LOST = "worker-lost"        # the worker (or its Ray node) vanished without a word
    GPU_UNAVAILABLE = "gpu-unavailable"  # the worker was given GPUs it cannot see (container passthrough)


RETRYABLE_ERROR_KINDS = frozenset({ErrorKind.INTERRUPTED, ErrorKind.INFRASTRUCTURE, ErrorKind.WORKER_LOST})


class WorkerExit(IntEnum):
    OK = 0
    BAD_SPEC = 2          # the experiment spec did not validate (a version mismatch, a bug): nothing ran
    LOAD_FAILED = 3       # the model did not load; every trial of the experiment is recorded as failed
    INTERRUPTED = 130     # SIGINT / SIGTERM
    BROKEN_PIPE = 141     # the dispatcher stopped reading


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ---------------------------------------------------------------------- experiment spec
class GpuRef(_Model):
    """One GPU an experiment runs on, as the host numbers it."""
    index: int
    uuid: str | None = None


class TrialSpec(_Model):
    trial_id: str
    config_id: str
    repeat: int
    round: int
    params: dict[str, Any]       # the configuration's parameters (model, backend, device, workload, engine)


class ExperimentSpec(_Model):
    """One experiment: the trials of one load group in one round, run by one worker."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    spec_version: int = SPEC_VERSION
    experiment_id: str
    study: str
    round: int
    base_dir: str = "."                     # relative dataset / model paths resolve against this
    seed: int = 0
    trust_remote_code: bool = False
    measurement: MeasurementConfig
    device_idle: dict[str, Any] | None = None          # IdleBaseline fields, measured by the host
    device_idle_flags: list[str] = Field(default_factory=list)
    thermal_reference_c: float | None = None
    node: dict[str, Any] = Field(default_factory=dict)  # where it ran (Ray fills it on the node)
    env: dict[str, str] = Field(default_factory=dict)   # environment the worker sets before loading
    gpus: list[GpuRef] = Field(default_factory=list)    # the host GPUs the experiment was given
    worker_device: str | None = None        # the device as the worker sees it (a container numbers its GPUs
                                            # from 0: the host's cuda:1 is cuda:0 inside); None: the trials'
    trials: list[TrialSpec]

    @property
    def first_params(self) -> dict[str, Any]:
        return self.trials[0].params if self.trials else {}

    @property
    def backend(self) -> str | None:
        return self.first_params.get("backend")

    @property
    def trial_ids(self) -> list[str]:
        return [t.trial_id for t in self.trials]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ExperimentSpec:
        return cls.model_validate_json(text)


# ---------------------------------------------------------------------- events
class ReadyEvent(_Model):
    event: Literal["ready"] = "ready"
    preloaded: str | None = None


class ExperimentStartEvent(_Model):
    event: Literal["experiment_start"] = "experiment_start"
    experiment_id: str
    worker_id: str | None = None
    reused: bool = False


class ExperimentEndEvent(_Model):
    event: Literal["experiment_end"] = "experiment_end"
    experiment_id: str
    error: str | None = None


class PhaseEvent(_Model):
    event: Literal["phase"] = "phase"
    phase: Phase
    trial_id: str | None = None
    error: str | None = None


class TrialStartEvent(_Model):
    event: Literal["trial_start"] = "trial_start"
    trial_id: str


class TrialEndEvent(_Model):
    event: Literal["trial_end"] = "trial_end"
    trial_id: str
    status: TrialStatus


Event = Annotated[Union[ReadyEvent, ExperimentStartEvent, ExperimentEndEvent, PhaseEvent, TrialStartEvent,
                        TrialEndEvent], Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def format_event(event: BaseModel) -> str:
    """One line of the worker's stdout."""
    return EVENT_PREFIX + json.dumps(event_to_dict(event), sort_keys=True)


def parse_event(line: str) -> Event | None:
    """The event on a worker's stdout line; None for any other line (engine output, a torn line)."""
    line = line.strip()
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        return _EVENT.validate_json(line[len(EVENT_PREFIX):])
    except ValidationError:
        return None


def event_to_dict(event: BaseModel) -> dict[str, Any]:
    return json.loads(event.model_dump_json(exclude_none=True))


# ---------------------------------------------------------------------- Ray's stream
class NodeItem(_Model):
    kind: Literal["node"] = "node"
    node: dict[str, Any]


class EventItem(_Model):
    kind: Literal["event"] = "event"
    event: Event


class TrialItem(_Model):
    """A finished trial: its end event, record and files, copied from the node's temporary study."""
    kind: Literal["trial"] = "trial"
    event: TrialEndEvent
    record: dict[str, Any] | None = None      # the trial record (results/schema.py's TrialRecord, as JSON)
    timeseries: bytes | None = None           # the trial's timeseries parquet, if any
    requests_trace: bytes | None = None       # served mode: its requests trace parquet, if any
    logs: dict[str, bytes] = Field(default_factory=dict)


class OutcomeItem(_Model):
    kind: Literal["outcome"] = "outcome"
    exit_code: int | None = None
    in_flight: str | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    log_tail: str = ""
    log: bytes = b""


RayItem = Annotated[Union[NodeItem, EventItem, TrialItem, OutcomeItem], Field(discriminator="kind")]
