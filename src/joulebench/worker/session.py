"""One experiment's measurement protocol (METHODOLOGY.md section 3).

An experiment is a list of trials of one load group, served by one worker with one
model load:

    pre-flight -> load (timed, metered) -> loaded-idle reference
    for each trial: worker/trial.py (pre-flight, warm-up, thermal gate, measured window, record)

A worker may serve later experiments of the same load group (the next rounds) with
the model it already holds (``continue_with``): no reload, the loaded-idle reference
re-measured only when older than ``baseline_max_age_s``, one sampler process for all
windows, and warm-up that judges stability over this worker's earlier passes of the
same configuration too (a configuration already stable needs ``warmup.rewarm_passes``
new passes, not a full warm-up, unless the new passes disagree with the old).

The device-idle reference is measured by the orchestrator on the host, before any
worker holds a context, and arrives in the experiment spec.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from joulebench.backends import get_backend_class
from joulebench.config.device import DeviceSpec
from joulebench.backends.base import Backend
from joulebench.models import parse_model
from joulebench.results.store import StudyStore
from joulebench.spec import (ErrorKind, ExperimentEndEvent, ExperimentSpec, ExperimentStartEvent, Phase,
                             PhaseEvent, TrialEndEvent, TrialSpec, TrialStartEvent, TrialStatus, WorkerExit)
from joulebench.system.snapshot import collect_environment
from joulebench.worker.gpus import GpuUnavailable, check_assigned_gpus, unused_gpus, used_gpus
from joulebench.worker.record import WorkerFacts, failed_record
from joulebench.worker.trial import WarmState, run_trial

Emit = Callable[[Any], None]      # takes one spec.py event model


class ExperimentSession:
    """Runs the trials of one experiment spec inside this (worker) process."""

    def __init__(self, spec: ExperimentSpec, out_dir: Path, emit: Emit):
        self.spec = spec
        self.out = StudyStore(out_dir)
        self.out.create()
        self.emit = emit
        self.m = spec.measurement
        self.backend: Backend | None = None
        self.devices: list = []
        self.cpu_devs: list = []
        self.unused_devs: list = []
        self.loaded_idle = None
        self.load_info = None
        self.load_energy_j = None
        self.env = None
        self.worker_id = spec.experiment_id          # the experiment that started (and loaded) this worker
        self.sampler = None                          # one sampler process for all windows of this worker
        self.warm = WarmState()
        self.load_identity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ experiment
    def run(self) -> int:
        """The worker's first experiment: load the model, then run its trials. 3: the load failed."""
        eid = self.spec.experiment_id
        self.emit(ExperimentStartEvent(experiment_id=eid, worker_id=self.worker_id))
        try:
            self._load()
        except GpuUnavailable as e:   # never a silent CPU fallback; not retried (the engine lacks something)
            for t in self.spec.trials:
                self._write_failed(t, str(e), ErrorKind.GPU_UNAVAILABLE)
            self.emit(ExperimentEndEvent(experiment_id=eid, error=str(e)))
            return WorkerExit.LOAD_FAILED
        except Exception as e:  # noqa: BLE001 - a load failure fails every trial of the experiment
            err = f"{type(e).__name__}: {e}"
            for t in self.spec.trials:
                self._write_failed(t, err, ErrorKind.ERROR, tb=traceback.format_exc())
            self.emit(ExperimentEndEvent(experiment_id=eid, error=err))
            return WorkerExit.LOAD_FAILED
        self._run_trials(self.spec.trials)
        self.emit(ExperimentEndEvent(experiment_id=eid))
        return WorkerExit.OK

    def continue_with(self, spec: ExperimentSpec) -> None:
        """A later experiment of the same load group, served with the model already loaded."""
        self.spec = spec
        self.m = spec.measurement
        eid = spec.experiment_id
        self.emit(ExperimentStartEvent(experiment_id=eid, worker_id=self.worker_id, reused=True))
        problem = None
        wanted = load_identity(spec)
        if self.backend is None:
            problem = "this worker holds no loaded model"
        elif wanted != self.load_identity:
            problem = f"this worker's model was loaded with {self.load_identity}, the experiment needs {wanted}"
        if problem:
            for t in spec.trials:
                self._write_failed(t, f"cannot reuse worker {self.worker_id}: {problem}", ErrorKind.ERROR)
            self.emit(ExperimentEndEvent(experiment_id=eid, error=problem))
            return
        try:
            self._refresh_loaded_idle()
        except Exception as e:  # noqa: BLE001 - keep the old reference; the records say when it was measured
            self.phase(Phase.LOADED_IDLE, None, error=f"{type(e).__name__}: {e}")
        self._run_trials(spec.trials)
        self.emit(ExperimentEndEvent(experiment_id=eid))

    def _run_trials(self, trials: list[TrialSpec]) -> None:
        for t in trials:
            self.emit(TrialStartEvent(trial_id=t.trial_id))
            try:
                rec = run_trial(self, t)
            except Exception as e:  # noqa: BLE001 - one trial's failure is recorded, the rest go on
                rec = self._write_failed(t, f"{type(e).__name__}: {e}", ErrorKind.ERROR, tb=traceback.format_exc())
            self.emit(TrialEndEvent(trial_id=t.trial_id, status=TrialStatus(rec["status"])))

    def phase(self, phase: Phase, trial_id: str | None = None, error: str | None = None) -> None:
        self.emit(PhaseEvent(phase=phase, trial_id=trial_id, error=error))

    # ------------------------------------------------------------------ load and loaded idle
    def _load(self) -> None:
        from joulebench.devices import cpu_devices
        from joulebench.meters.window import EnergyWindow

        first = self.spec.first_params
        self.env = runner_environment(collect_environment())
        assigned = check_assigned_gpus()   # raises GpuUnavailable before any model is loaded
        backend_cls = get_backend_class(first["backend"])
        engine = {k: v for k, v in first.items() if k in backend_cls.Params.model_fields}
        # A container numbers its passed GPUs from 0: its runner says so in ``worker_device``.
        device = DeviceSpec.parse(self.spec.worker_device) if self.spec.worker_device else DeviceSpec.of(first)
        options = {"device": str(device), "trust_remote_code": self.spec.trust_remote_code,
                   "seed": self.spec.seed, "weights_seed": 0}
        self.backend = backend_cls(backend_cls.Params.model_validate(engine), options)
        self.load_identity = load_identity(self.spec)
        model = parse_model(first["model"])
        resolved = device.resolve()
        intended, self.devices = list(resolved.ordinals), resolved.devices
        if assigned and len(assigned) == len(self.devices):
            self.devices = assigned     # a container's GPUs, metered by the UUIDs the host assigned
        self.cpu_devs = cpu_devices()
        self.phase(Phase.LOAD)
        with EnergyWindow(self.devices + self.cpu_devs) as w:
            self.load_info = self.backend.load(model)
        self.load_energy_j = w.result.energy_j if w.result else None
        self.devices = used_gpus(intended, self.backend.cuda_device_indices(), self.devices)
        self.unused_devs = unused_gpus(self.devices)
        if self.m.loaded_idle_s > 0 and self.devices:
            self._measure_loaded_idle()

    def _refresh_loaded_idle(self) -> None:
        """Re-measure the loaded-idle reference of a long-lived worker once it is older than allowed."""
        if self.loaded_idle is None or not self.devices or self.m.loaded_idle_s <= 0:
            return
        if time.time() - self.loaded_idle.measured_at <= self.m.baseline_max_age_s:
            return
        self._measure_loaded_idle()

    def _measure_loaded_idle(self) -> None:
        from joulebench.meters.baselines import measure_idle_power

        self.phase(Phase.LOADED_IDLE)
        self.loaded_idle = measure_idle_power(self.devices, self.m.loaded_idle_s, sync=self.backend.synchronize)

    # ------------------------------------------------------------------ what trials use
    def facts(self) -> WorkerFacts:
        """What this worker's load left behind, for the records."""
        return WorkerFacts(worker_id=self.worker_id, environment=self.env or {}, load_info=self.load_info,
                           load_energy_j=self.load_energy_j, loaded_idle=self.loaded_idle)

    def sampler_process(self):
        """This worker's sampler process (started at the first window, restarted if it died)."""
        if not (self.m.sampler and (self.devices or self.cpu_devs)):
            return None
        hz = float(self.m.sampler_hz)
        if self.sampler is not None and (not self.sampler.alive or self.sampler.hz != hz):
            self.sampler.close()
            self.sampler = None
        if self.sampler is None:
            from joulebench.meters.sampler import Sampler

            s = Sampler([d.info.uuid for d in self.devices], hz=hz, cpu=bool(self.cpu_devs))
            s.open()
            self.sampler = s
        return self.sampler

    def own_pids(self) -> set[int]:
        """This worker and everything below it (engine processes, the sampler)."""
        from joulebench.system.proc import descendants

        return descendants(os.getpid())

    def device_idle(self):
        """The host's device-idle reference (IdleBaseline), if the spec carries one."""
        d = self.spec.device_idle
        if not d:
            return None
        from joulebench.meters.baselines import IdleBaseline

        return IdleBaseline(**d)

    def _write_failed(self, trial: TrialSpec, error: str, kind: ErrorKind, tb: str | None = None) -> dict[str, Any]:
        if tb:
            (self.out.logs_dir / f"{trial.trial_id}.traceback.txt").write_text(tb)
        rec = failed_record(self.spec, trial, self.facts(), error, kind, finished_at=time.time())
        self.out.write_record(rec)
        return rec

    def close(self) -> None:
        if self.sampler is not None:
            try:
                self.sampler.close()
            except Exception:  # noqa: BLE001
                pass
            self.sampler = None
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001
                pass


def runner_environment(env: dict[str, Any]) -> dict[str, Any]:
    """The environment snapshot plus where the worker runs: runner kind, container engine, GPU passthrough,
    image (set by the docker runner; the process runner's workers say ``process``)."""
    from joulebench.spec import (ENV_ASSIGNED_GPUS, ENV_CONTAINER_ENGINE as ENV_ENGINE, ENV_GPU_PASSTHROUGH as
                                 ENV_PASSTHROUGH, ENV_IMAGE, ENV_IMAGE_ID, ENV_RUNNER)

    g = os.environ.get
    runner: dict[str, Any] = {"kind": g(ENV_RUNNER) or "process"}
    for key, var in (("container_engine", ENV_ENGINE), ("gpu_passthrough", ENV_PASSTHROUGH), ("image", ENV_IMAGE),
                     ("image_id", ENV_IMAGE_ID)):
        if g(var):
            runner[key] = g(var)
    if g(ENV_ASSIGNED_GPUS):
        runner["assigned_gpus"] = g(ENV_ASSIGNED_GPUS).split(",")
    return {**env, "runner": runner}


def load_identity(spec: ExperimentSpec) -> dict[str, Any]:
    """What a worker's model load depends on: the first trial's load-time parameters."""
    from joulebench.backends import load_parameters

    return load_parameters(spec.trials[0].params) if spec.trials else {}
