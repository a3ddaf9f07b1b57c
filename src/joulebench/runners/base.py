"""The runner interface: how one experiment (one worker, one model load) is run.

An *experiment* is a list of trials that share load-time parameters. The
orchestrator hands it to a runner; the runner starts an isolated worker (a
spawned local process, a short-lived container, a Ray task), which writes one
record per trial under ``<out>/trials/<id>.json`` and a timeline under
``<out>/timeseries/<id>.parquet`` and prints JSON-line events on stdout.

Worker command line (identical in every runner)::

    python -m joulebench.worker.main EXPERIMENT.json --out OUTDIR

EXPERIMENT.json is an :class:`~joulebench.spec.ExperimentSpec` (``spec.to_json()``). The worker
answers with :data:`~joulebench.spec.Event` lines on its stdout (``spec.format_event``), told apart
from engine chatter by their prefix; runners read them with ``spec.parse_event`` and pass the typed
events to ``on_event``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from joulebench.spec import ErrorKind, Event, ExperimentSpec




@dataclass
class Experiment:
    """One worker's job. ``spec`` is exactly what is written to EXPERIMENT.json (``spec.to_json()``)."""

    experiment_id: str
    study_name: str
    study_dir: Path
    spec: ExperimentSpec
    trial_ids: list[str] = field(default_factory=list)   # default: the spec's
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

    def __post_init__(self) -> None:
        if not self.trial_ids and isinstance(self.spec, ExperimentSpec):
            self.trial_ids = self.spec.trial_ids


@dataclass
class ExperimentOutcome:
    experiment_id: str
    exit_code: int | None
    # Trial ids whose records the worker finished (ok or failed) and that are now in the study dir.
    finished: list[str] = field(default_factory=list)
    # The trial the worker was in when it stopped, if it did not finish it.
    in_flight: str | None = None
    error: str | None = None        # why the worker ended abnormally
    error_kind: ErrorKind | None = None
    log_tail: str = ""
    started: bool = False           # the worker began this experiment (its experiment_start event came)
    reusable: bool = False          # the worker finished it cleanly and can serve the next one


EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class Capabilities:
    """What a kind of runner does, declared once in runners/registry.py; the orchestrator asks these
    instead of the runner's name. The defaults fit a runner that declares nothing."""

    # keeps a worker between experiments (``worker_key``)
    reuses_workers: bool = False
    # its workers are processes of this host that it can name (``live_pids``: their GPU use is ours)
    host_processes: bool = False
    # can start the first worker early (``prestart``), overlapping its imports with the device idle reference
    prestarts_workers: bool = False
    # runs several experiments at once (``max_concurrent``) and can stop them all (``cancel_all``)
    parallel_experiments: bool = False
    # the worker runs on this host in an interpreter of an engine environment (checked before the study)
    host_interpreter: bool = False
    # the experiment's GPUs are this host's: take the host GPU lock, run the busy-GPU gate, fence them
    host_gpus: bool = True
    # the engine runs in an image built from this checkout (built before a nightly run)
    builds_images: bool = False


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


class ReusingRunner(Runner):
    """The worker-reuse policy of runners that can keep a worker between experiments (process, docker).

    An experiment with a ``worker_key`` is handed to the live worker of that key, if there is one;
    else any live worker is retired first (never two models loaded at once) and a fresh worker runs
    it, kept afterwards when it ended the experiment cleanly. A live worker that is gone before it
    took the experiment is replaced by a fresh one. Subclasses provide the worker handle (with
    ``key`` and ``alive()``) and these steps.
    """

    _worker: Any = None

    def _launch(self, experiment: Experiment, *, serve: bool) -> tuple[Any, ExperimentOutcome | None]:
        """Start a worker for ``experiment``: (handle, None), or (None, the failed outcome)."""
        raise NotImplementedError

    def _send(self, handle: Any, experiment: Experiment) -> None:
        """Hand the live worker its next experiment."""
        raise NotImplementedError

    def _follow(self, handle: Any, experiment: Experiment, on_event: EventCallback, timeout_s: float | None,
                *, until_end: bool) -> ExperimentOutcome:
        """Follow the experiment until its end event (``until_end``) or the worker's exit."""
        raise NotImplementedError

    def _discard(self, handle: Any) -> None:
        """Make sure the worker is gone and release what it held."""
        raise NotImplementedError

    def _stop_idle(self, handle: Any) -> None:
        """Ask the idle worker to finish (it closes its engine), then discard it."""
        self._discard(handle)

    def worker_key(self, experiment: Experiment) -> str | None:
        return experiment.worker_key

    def reuses(self, experiment: Experiment) -> bool:
        w, key = self._worker, self.worker_key(experiment)
        return bool(key) and w is not None and w.key == key and w.alive()

    def _retire(self) -> None:
        w, self._worker = self._worker, None
        if w is not None:
            self._stop_idle(w)

    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        key = self.worker_key(experiment)
        if self._worker is not None and not self.reuses(experiment):
            self._retire()
        if self._worker is not None:
            w, self._worker = self._worker, None
            try:
                self._send(w, experiment)
                outcome = self._follow(w, experiment, on_event, timeout_s, until_end=True)
            except BaseException:
                self._discard(w)
                raise
            if outcome.reusable and w.alive():
                self._worker = w
                return outcome
            self._discard(w)
            if outcome.finished or outcome.in_flight or outcome.started:
                return outcome
            # the idle worker was gone before it took this experiment: a fresh one runs it
        w, failed = self._launch(experiment, serve=bool(key))
        if failed is not None:
            return failed
        try:
            outcome = self._follow(w, experiment, on_event, timeout_s, until_end=bool(key))
        except BaseException:
            self._discard(w)
            raise
        if key and outcome.reusable and w.alive():
            self._worker = w
        else:
            self._discard(w)
        return outcome

    def close(self) -> None:
        self._retire()
