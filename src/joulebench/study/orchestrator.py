"""The study engine: plan -> rounds -> experiments -> records, safe to interrupt.

* ``plan.json`` is written before anything runs; every trial record is written
  atomically the moment it finishes, so a crash loses at most the trial in flight.
* Round r runs repeat r of every configuration that still needs one, in a seeded
  blocked shuffle (see plan.py). Repeats beyond ``repeats.min`` are adaptive: a
  configuration continues while the 95 % CI half-width of its mean J/output-token
  (tokens/s where no energy meter exists) is above ``repeats.ci_target``.
* One experiment = the round's configurations of one load group, run by one isolated
  worker with one model load. With ``runner_options.reuse_workers`` (the default) the
  worker stays and serves the same load group's experiments in later rounds too (the
  plan starts each round with the group that ended the previous one), so a study of
  runtime parameters loads its model once. A worker that crashes, hangs past its
  timeout or is killed turns its trial in flight into a failed record; the rest of its
  trials continue in a fresh worker.
* Ctrl-C (or SIGTERM): the worker is stopped, the trial in flight is marked
  ``interrupted`` (resume runs it again), exit code 130.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from joulebench.config.device import DeviceSpec
from joulebench.config.loader import LoadedStudy
from joulebench.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIALS_FAILED, JoulebenchError
from joulebench.results.store import StudyStore
from joulebench.runners.base import Experiment, ExperimentOutcome, Runner
from joulebench.runners.registry import capabilities_of
from joulebench.spec import ErrorKind, ExperimentSpec, GpuRef
from joulebench.study.busy import BusyGuard
from joulebench.study.checks import check_engine_environments
from joulebench.study.display import Display
from joulebench.study.experiment import ExperimentProgress, experiment_spec, write_failed_trial
from joulebench.study.locks import EXIT_BUSY, GpuBusy
from joulebench.study.plan import Configuration, Plan, trial_id_for
from joulebench.study.references import device_idle_reference, remember_thermal_reference, study_gpus
from joulebench.study.rounds import configs_needing


@dataclass
class StudyResult:
    study_dir: Path
    exit_code: int
    ok: int
    failed: int
    interrupted: bool = False

    def __fspath__(self) -> str:
        return str(self.study_dir)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is, but named as what it was (a cron timeout, ``docker stop``, a job limit)."""

    def __str__(self) -> str:
        return "stopped by SIGTERM"


def interrupt_cause(exc: BaseException) -> str:
    """What stopped the study, for records and messages."""
    return str(exc) if isinstance(exc, Terminated) else "interrupted by the user (Ctrl-C)"


def _sigterm_as_interrupt():
    """SIGTERM (docker stop, a cron timeout) raises ``Terminated``, a KeyboardInterrupt, as Ctrl-C does; the
    previous handler, to restore, or None where signals cannot be set here (not the main thread)."""
    def _term(signum, frame):  # noqa: ARG001
        raise Terminated

    prev_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        return None
    return prev_term


class Orchestrator:
    def __init__(self, loaded: LoadedStudy, plan: Plan, study_dir: Path, runner: Runner, display: Display):
        self.loaded = loaded
        self.cfg = loaded.config
        self.plan = plan
        self.store = StudyStore(study_dir)
        self.runner = runner
        self.capabilities = capabilities_of(runner)
        self.display = display
        self.axes = list(plan.axes)
        self.device_idle: dict | None = None
        self.device_idle_flags: list[str] = []
        self._attempt = 0
        self._attempt_lock = threading.Lock()
        self._run_tag = f"{int(time.time()) % 100000:05d}-"   # experiment ids stay unique across resumes
        self._stopping = False   # set on Ctrl-C while experiments run in parallel (ray runner)
        self._failed_now: set[str] = set()   # trials failed in this run: not run again until resume
        # shared GPU box (busy.py, locks.py): what to do when other users are on an experiment's GPUs;
        # off for Ray: the GPUs are on another node
        self.busy = BusyGuard(self.cfg, enabled=self.capabilities.host_gpus, log=display.log)
        self.busy_gate = self.busy.gate
        self.retry_failed = False   # resume --retry-failed: failed trials run again (once per run)

    # ------------------------------------------------------------------ top level
    def run(self) -> StudyResult:
        interrupted = False
        self._cause = "interrupted by the user (Ctrl-C)"
        stopped: str | None = None
        prev_term = _sigterm_as_interrupt()
        self.store.update_manifest(status="running", pid=os.getpid(), last_started_at=time.time())
        self.display.start(self._planned_total(), f"study {self.cfg.name}")
        try:
            stopped = self._run_rounds()
        except KeyboardInterrupt as stop:
            interrupted = True
            self._cause = interrupt_cause(stop)
        except GpuBusy as e:
            stopped = str(e)
        finally:
            self.display.stop()
            try:
                self.runner.close()
            except Exception:  # noqa: BLE001
                pass
            if prev_term is not None:
                signal.signal(signal.SIGTERM, prev_term)
        return self._finish(interrupted, stopped)

    def _run_rounds(self) -> str | None:
        """Every round, then what the busy-GPU check deferred; the reason the study stopped, if it did."""
        self.runner.prepare(self.store.root, self.cfg.name)
        if self.capabilities.host_interpreter:   # containers carry their engine; Ray nodes check their own
            check_engine_environments(self.plan.configs, runner_options=self.cfg.runner_options,
                                      base_dir=self.loaded.base_dir, log=self.display.log)
        self._prestart_first_worker()
        self.busy.before_idle_reference(lambda: study_gpus(self.plan))
        self.device_idle, self.device_idle_flags = device_idle_reference(self.plan, self.store, self.display)
        for r in range(self.plan.max_repeats):
            needed = self._configs_needing(r)
            if not needed:
                continue
            self.display.set_total(self._planned_total())
            self._run_round(r, needed)
        if not self.busy.deferred:
            return None
        # busy_gpu: skip - the rest ran; now wait (busy_wait_s) for what was deferred
        self.busy_gate.policy = "wait"
        for r in range(self.plan.max_repeats):
            needed = self._configs_needing(r)
            if needed:
                self._run_round(r, needed)
        if any(self._configs_needing(r) for r in range(self.plan.min_repeats)):
            return "GPUs still busy: some experiments were deferred and did not run"
        return None

    def _finish(self, interrupted: bool, stopped: str | None) -> StudyResult:
        """The manifest's final status, the closing line, the exit code."""
        records = self.store.records_by_id()
        ok = sum(1 for r in records.values() if r.get("status") == "ok")
        failed = sum(1 for r in records.values() if r.get("status") == "failed")
        if interrupted:
            self.store.update_manifest(status="interrupted", finished_at=time.time(), ok=ok, failed=failed)
            self.display.log(f"{self._cause}: {ok} trials kept; continue with `joulebench resume {self.store.root}`")
            return StudyResult(self.store.root, EXIT_INTERRUPTED, ok, failed, interrupted=True)
        if stopped:
            self.store.update_manifest(status="interrupted", stop_reason=stopped, finished_at=time.time(),
                                       ok=ok, failed=failed)
            self.display.log(f"stopped: {stopped}; {ok} trials kept; the next run resumes the rest "
                             f"(`joulebench resume {self.store.root}`)")
            return StudyResult(self.store.root, EXIT_BUSY, ok, failed, interrupted=True)
        self.store.update_manifest(status="finished", finished_at=time.time(), ok=ok, failed=failed)
        code = EXIT_OK if failed == 0 else EXIT_TRIALS_FAILED
        return StudyResult(self.store.root, code, ok, failed)

    def _worker_key(self, c: Configuration) -> tuple[str | None, str | None]:
        """(worker key, interpreter) of the worker that serves configuration ``c``; key None: no reuse."""
        from joulebench.runners.environments import resolve_python   # study map, python, JOULEBENCH_<B>_PYTHON, user file, ./.venvs

        opts = self.cfg.runner_options
        python = resolve_python(c.params["backend"], opts.environment_options(), base_dir=self.loaded.base_dir)
        reuse = opts.reuse_workers and not opts.one_worker_per_trial
        return (f"{c.load_group}|{python or ''}" if reuse else None), python

    def _prestart_first_worker(self) -> None:
        """Start the first experiment's worker now: its interpreter and engine imports overlap the
        device idle reference (no device is touched until its experiment arrives)."""
        if not self.capabilities.prestarts_workers:
            return
        prestart = self.runner.prestart
        for r in range(self.plan.max_repeats):
            needed = self._configs_needing(r)
            if needed:
                first = self.plan.round_order(r, needed)[0]
                key, python = self._worker_key(first)
                if key:
                    prestart(self.store.root, worker_key=key, python=python, backend=first.params["backend"])
                return

    def _planned_total(self) -> int:
        done = self.store.records_by_id()
        n = 0
        for c in self.plan.configs:
            ran = sum(1 for r in range(self.plan.max_repeats) if trial_id_for(c.config_id, r) in done)
            n += max(ran, self.plan.min_repeats)
        return n

    # ------------------------------------------------------------------ experiments
    def _experiment_gpus(self, c: Configuration) -> list[GpuRef]:
        """The host GPUs the experiment uses (index and UUID, resolved once); where they cannot be resolved
        here (no NVML; a Ray node's GPUs), the CUDA ordinals its device names, without UUIDs."""
        spec = DeviceSpec.of(c.params)
        if self.capabilities.host_gpus:
            try:
                res = spec.resolve()
                return [GpuRef(index=i, uuid=u) for i, u in zip(res.ordinals, res.uuids)]
            except JoulebenchError:
                pass   # the worker reports the device problem in its records
        return [GpuRef(index=o) for o in spec.ordinals]

    # ------------------------------------------------------------------ rounds
    def _done(self) -> set[str]:
        """Trials not to run (again) in this run: finished ones, failed ones unless retrying them
        (``resume --retry-failed``, whose records keep their error until the rerun replaces them),
        and whatever failed during this run."""
        return self.store.done_ids(retry_failed=self.retry_failed) | self._failed_now

    def _configs_needing(self, r: int) -> list[str]:
        return configs_needing(r, [c.config_id for c in self.plan.configs], self.store.records_by_id(),
                               self._done(), self.plan.config.repeats)

    def _run_round(self, r: int, config_ids: list[str]) -> None:
        order = self.plan.round_order(r, config_ids)
        groups: list[list[Configuration]] = []
        for c in order:
            if groups and groups[-1][0].load_group == c.load_group and not self.cfg.runner_options.one_worker_per_trial:
                groups[-1].append(c)
            else:
                groups.append([c])
        # A runner that spreads experiments over a cluster (ray) runs the round's load groups at once.
        concurrent = self.runner.max_concurrent if self.capabilities.parallel_experiments else 1
        parallel = min(int(concurrent or 1), len(groups))
        if parallel > 1:
            self._run_groups_parallel(r, groups, parallel)
        else:
            self._run_groups(r, groups)

    def _run_groups_parallel(self, r: int, groups: list[list[Configuration]], parallel: int) -> None:
        from concurrent.futures import ThreadPoolExecutor, wait

        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="joulebench-experiment")
        futures = [pool.submit(self._run_groups, r, [members]) for members in groups]
        try:
            while not all(f.done() for f in futures):
                wait(futures, timeout=0.2)
            for f in futures:
                f.result()
        except BaseException:
            # Ctrl-C (or an error in one group): stop starting experiments, cancel the running ones;
            # each returns an 'interrupted' outcome and its trial in flight is marked for resume.
            self._stopping = True
            for f in futures:
                f.cancel()
            cancel = self.runner.cancel_all if self.capabilities.parallel_experiments else None
            while not all(f.done() for f in futures):
                if cancel:
                    cancel()
                wait(futures, timeout=0.5)
            raise
        finally:
            pool.shutdown(wait=False)

    def _run_groups(self, r: int, groups: list[list[Configuration]]) -> None:
        for members in groups:
            pending = [trial_id_for(c.config_id, r) for c in members]
            by_tid = {trial_id_for(c.config_id, r): c for c in members}
            while pending and not self._stopping:
                if not self._busy_check(r, [by_tid[t] for t in pending], pending):
                    break   # deferred to a later round
                outcome = self._run_experiment(r, [by_tid[t] for t in pending])
                done = self._done()
                if outcome.in_flight and outcome.in_flight not in done:
                    self._mark_failed(by_tid[outcome.in_flight], r, outcome.error or "worker ended mid-trial",
                                      outcome.error_kind or ErrorKind.CRASH, outcome)
                elif outcome.error and not outcome.finished and not outcome.in_flight:
                    # the worker never started a trial: fail them all rather than loop
                    for t in pending:
                        if t not in self._done():
                            self._mark_failed(by_tid[t], r, outcome.error, outcome.error_kind or ErrorKind.CRASH,
                                              outcome)
                done = self._done()
                # a retryable failure (infrastructure, worker-lost) is not 'done', but this run must not loop on it
                pending = [t for t in pending if t not in done and t not in self._failed_now]

    def _busy_check(self, r: int, configs: list[Configuration], tids: list[str]) -> bool:
        """Before an experiment: other users on its GPUs? True: run it; False: deferred; GpuBusy: stop."""
        # A worker of ours kept alive between rounds holds memory on these GPUs: not another user.
        own = (lambda: self.runner.live_pids()) if self.capabilities.host_processes else set
        return self.busy.before_experiment(r, configs, tids, own_pids=own)

    def _experiment_spec(self, experiment_id: str, r: int, configs: list[Configuration]) -> ExperimentSpec:
        return experiment_spec(self.loaded, self.store, experiment_id, r, configs, device_idle=self.device_idle,
                               device_idle_flags=self.device_idle_flags,
                               allow_foreign_processes=self.busy_gate.policy == "allow")

    def _run_experiment(self, r: int, configs: list[Configuration]) -> ExperimentOutcome:
        with self._attempt_lock:
            self._attempt += 1
            attempt = self._attempt
        eid = f"r{r}-{configs[0].load_group}-{self._run_tag}{attempt:03d}"
        gpus = self._experiment_gpus(configs[0])
        spec = self._experiment_spec(eid, r, configs).model_copy(update={"gpus": gpus})
        key, python = self._worker_key(configs[0])
        exp = Experiment(experiment_id=eid, study_name=self.cfg.name, study_dir=self.store.root, spec=spec,
                         trial_ids=spec.trial_ids,
                         label=f"{configs[0].params['backend']} {configs[0].params['model']}", python=python,
                         worker_key=key, gpus=[g.uuid or str(g.index) for g in gpus])
        progress = ExperimentProgress(self.store, self.display, r, exp.label, exp.trial_ids,
                                      labels={t.trial_id: c.label(self.axes) for t, c in zip(spec.trials, configs)})
        try:
            outcome = self.runner.run_experiment(exp, on_event=progress,
                                                 timeout_s=self.cfg.runner_options.timeout_s)
        except KeyboardInterrupt as stop:
            if progress.in_flight and progress.in_flight not in self._done():
                c = {trial_id_for(c.config_id, r): c for c in configs}[progress.in_flight]
                self._mark_failed(c, r, f"{interrupt_cause(stop)}; resume runs it again", ErrorKind.INTERRUPTED,
                                  None)
            raise
        self.busy.record_notes(self.store, eid, exp.trial_ids)
        if outcome.error:
            self.display.log(f"experiment {eid}: {outcome.error}")
        remember_thermal_reference(self.store)
        return outcome

    def _mark_failed(self, c: Configuration, r: int, error: str, kind: ErrorKind,
                     outcome: ExperimentOutcome | None) -> None:
        self._failed_now.add(trial_id_for(c.config_id, r))
        write_failed_trial(self.store, self.display, self.cfg.name, c, r, error, kind, outcome)
