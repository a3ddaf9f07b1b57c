"""The runner interface: how one experiment (one worker, one model load) is run.

An *experiment* is a list of trials that share load-time parameters. The
orchestrator hands it to a runner; the runner starts an isolated worker (a
spawned local process, a short-lived container, a Ray task), which writes one
record per trial under ``<out>/trials/<id>.json`` and a timeline under
``<out>/timeseries/<id>.parquet`` and prints JSON-line events on stdout.

Worker command line (identical in every runner)::

    python -m joulebench.runners.worker EXPERIMENT.json --out OUTDIR

Events, one JSON object per line, prefixed with ``EVENT_PREFIX`` so they can be
told apart from engine chatter on the same stream::

    {"event": "experiment_start", "experiment_id": ...}
    {"event": "phase", "trial_id": ... or null, "phase": "load" | "loaded_idle" | "warmup" | "thermal" | "window" | ...}
    {"event": "trial_start", "trial_id": ...}
    {"event": "trial_end", "trial_id": ..., "status": "ok" | "failed"}
    {"event": "experiment_end", "experiment_id": ...}
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

EVENT_PREFIX = "@@joulebench "


def format_event(event: dict[str, Any]) -> str:
    return EVENT_PREFIX + json.dumps(event, sort_keys=True)


def parse_event(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        return json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None


@dataclass
class Experiment:
    """One worker's job. ``spec`` is exactly what is written to EXPERIMENT.json."""

    experiment_id: str
    study_name: str
    study_dir: Path
    spec: dict[str, Any]
    trial_ids: list[str]
    # Load-time identity (backend, model, engine env, image) for display.
    label: str = ""
    # GPUs (NVML UUIDs or indices) assigned to this experiment, [] on CPU.
    gpus: list[str] = field(default_factory=list)
    python: str | None = None   # interpreter of an engine environment (process runner)
    image: str | None = None    # container image (docker runner)
    # Experiments with the same key may be served by one long-lived worker (one model load), one
    # after the other; None: a fresh worker for this experiment. Runners that cannot keep a worker
    # between experiments ignore it.
    worker_key: str | None = None


@dataclass
class ExperimentOutcome:
    experiment_id: str
    exit_code: int | None
    # Trial ids whose records the worker finished (ok or failed) and that are now in the study dir.
    finished: list[str] = field(default_factory=list)
    # The trial the worker was in when it stopped, if it did not finish it.
    in_flight: str | None = None
    error: str | None = None        # why the worker ended abnormally
    error_kind: str | None = None   # "crash" | "timeout" | "interrupted" | "infrastructure"
    log_tail: str = ""
    started: bool = False           # the worker began this experiment (its experiment_start event came)
    reusable: bool = False          # the worker finished it cleanly and can serve the next one


EventCallback = Callable[[dict[str, Any]], None]


class Runner(abc.ABC):
    name: str = "runner"

    @abc.abstractmethod
    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        """Run one experiment to completion (or failure) and return its outcome.

        The worker's records must be in ``experiment.study_dir`` (merged with atomic
        writes) when this returns. Raises KeyboardInterrupt after cleaning up if the
        user interrupts.
        """

    def prepare(self, study_dir: Path, study_name: str) -> None:
        """Called once before the first experiment (sweep leftovers, build images)."""

    def close(self) -> None:
        """Release everything this runner started."""
