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

import datetime as _dt
import fcntl
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joulebench import __version__
from joulebench.config.loader import LoadedStudy, load_study, parse_study_text
from joulebench.study.display import Display
from joulebench.errors import (EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIALS_FAILED, JoulebenchError, ResumeError)
from joulebench.study.locks import EXIT_BUSY, BusyGpuGate, GpuBusy, experiment_gpus, study_lock
from joulebench.study.plan import Configuration, Plan, build_plan, trial_id_for
from joulebench.study.rounds import configs_needing
from joulebench.results.schema import SCHEMA_VERSION, TrialRecord
from joulebench.results.store import StudyStore, atomic_write_bytes, atomic_write_json, sha256_bytes
from joulebench.config.device import DeviceSpec, fence_violations
from joulebench.runners.base import Experiment, ExperimentOutcome, Runner
from joulebench.runners.registry import RunnerKind, capabilities, capabilities_of, make_runner, resolve_kind
from joulebench.spec import (ErrorKind, Event, ExperimentEndEvent, ExperimentSpec, Phase, PhaseEvent, TrialEndEvent,
                             TrialSpec, TrialStartEvent)

DEFAULT_RESULTS_ROOT = Path("joulebench-results")


@dataclass
class StudyResult:
    study_dir: Path
    exit_code: int
    ok: int
    failed: int
    interrupted: bool = False

    def __fspath__(self) -> str:
        return str(self.study_dir)


def default_study_dir(name: str, root: Path | None = None) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(root or DEFAULT_RESULTS_ROOT) / f"{name}-{stamp}"


class StudyLock:
    """One orchestrator per study directory (flock: released when the process dies)."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / ".lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            other = self.fh.read().strip() or "?"
            self.fh.close()
            raise JoulebenchError(f"another joulebench (pid {other}) is running the study in {self.path.parent}; "
                                  "wait for it to finish") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
        finally:
            self.fh.close()


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
        self.device_idle: dict[str, Any] | None = None
        self.device_idle_flags: list[str] = []
        self._in_flight: str | None = None
        self._attempt = 0
        self._attempt_lock = threading.Lock()
        self._run_tag = f"{int(time.time()) % 100000:05d}-"   # experiment ids stay unique across resumes
        self._stopping = False   # set on Ctrl-C while experiments run in parallel (ray runner)
        self._failed_now: set[str] = set()   # trials failed in this run: not run again until resume
        # shared GPU box (locks.py): what to do when other users are on an experiment's GPUs
        self.busy_gate = BusyGpuGate.from_config(self.cfg, log=display.log)
        self.busy_gate_enabled = self.capabilities.host_gpus   # off for Ray: the GPUs are on another node
        self._busy_note: dict[str, Any] | None = None
        self._deferred: dict[str, dict[str, Any]] = {}   # trial id -> note of its deferral
        self.retry_failed = False   # resume --retry-failed: failed trials run again (once per run)

    # ------------------------------------------------------------------ top level
    def run(self) -> StudyResult:
        interrupted = False
        stopped: str | None = None
        prev_term = signal.getsignal(signal.SIGTERM)

        def _term(signum, frame):  # noqa: ARG001 - docker stop / cron timeout: same as Ctrl-C
            raise KeyboardInterrupt

        try:
            signal.signal(signal.SIGTERM, _term)
        except ValueError:  # not the main thread
            prev_term = None
        self.store.update_manifest(status="running", pid=os.getpid(), last_started_at=time.time())
        total = self._planned_total()
        self.display.start(total, f"study {self.cfg.name}")
        try:
            self.runner.prepare(self.store.root, self.cfg.name)
            self._check_engine_environments()
            self._prestart_first_worker()
            self._idle_busy_check()
            self._device_idle_reference()
            for r in range(self.plan.max_repeats):
                needed = self._configs_needing(r)
                if not needed:
                    continue
                self.display.set_total(self._planned_total())
                self._run_round(r, needed)
            if self._deferred:   # busy_gpu: skip - the rest ran; now wait (busy_wait_s) for what was deferred
                self.busy_gate.policy = "wait"
                for r in range(self.plan.max_repeats):
                    needed = self._configs_needing(r)
                    if needed:
                        self._run_round(r, needed)
                if any(self._configs_needing(r) for r in range(self.plan.min_repeats)):
                    stopped = "GPUs still busy: some experiments were deferred and did not run"
        except KeyboardInterrupt:
            interrupted = True
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
        records = self.store.records_by_id()
        ok = sum(1 for r in records.values() if r.get("status") == "ok")
        failed = sum(1 for r in records.values() if r.get("status") == "failed")
        if interrupted:
            self.store.update_manifest(status="interrupted", finished_at=time.time(), ok=ok, failed=failed)
            self.display.log(f"interrupted: {ok} trials kept; continue with `joulebench resume {self.store.root}`")
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

    def _check_engine_environments(self) -> None:
        """Fail early (exit 2, with the fix) when a backend's engine cannot run in its interpreter."""
        if not self.capabilities.host_interpreter:
            return  # containers carry their engine; Ray nodes check their own
        import importlib.util
        import sys

        from joulebench.backends import ENGINE_PACKAGES
        from joulebench.runners.environments import require_environment, resolve_python
        from joulebench.errors import StudyError

        for backend in sorted({c.params["backend"] for c in self.plan.configs}):
            python = resolve_python(backend, self.cfg.runner_options.environment_options(),
                                    base_dir=self.loaded.base_dir)
            if python and Path(python).absolute() != Path(sys.executable).absolute():  # venvs share binaries
                self.display.log(f"checking the {backend} environment at {python}")
                require_environment(python, backend)
                continue
            missing = [p for p in ENGINE_PACKAGES.get(backend, ()) if importlib.util.find_spec(p) is None]
            if missing:
                raise StudyError(f"backend '{backend}' needs {', '.join(missing)}, which this Python "
                                 f"({sys.executable}) cannot import", path="backend",
                                 hint=f"install it (pip install 'joulebench[{backend}]'), or give the engine its "
                                      f"own environment: runner_options.environments.{backend}: /path/to/venv "
                                      "(docs/engines.md)")

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

    # ------------------------------------------------------------------ baselines
    def _study_gpus(self):
        from joulebench.devices import resolve_gpus

        ordinals: set[int] = set()
        for spec in {DeviceSpec.of(c.params) for c in self.plan.configs}:
            ordinals.update(spec.resolve().ordinals)
        if not ordinals:
            return []
        return resolve_gpus(sorted(ordinals))

    def _experiment_gpus(self, c: Configuration) -> list[str]:
        """Experiment.gpus: the UUIDs of the host GPUs the experiment uses; where they cannot be resolved
        here (no NVML; a Ray node's GPUs), the CUDA ordinals its device names."""
        spec = DeviceSpec.of(c.params)
        if self.capabilities.host_gpus:
            try:
                return list(spec.resolve().uuids)
            except JoulebenchError:
                pass   # the worker reports the device problem in its records
        return [str(o) for o in spec.ordinals]

    def _device_idle_reference(self) -> None:
        """Device idle power per GPU, measured here with no context of ours; reused while fresh."""
        secs = self.cfg.measurement.device_idle_s
        try:
            gpus = self._study_gpus()
        except Exception as e:  # noqa: BLE001
            self.display.log(f"no device idle reference: {e}")
            return
        if not gpus or secs <= 0:
            return
        from joulebench.meters.baselines import IdleBaseline, baseline_drifted, baseline_is_stale, measure_idle_power

        manifest = self.store.read_manifest()
        prev = manifest.get("device_idle")
        if prev:
            base = IdleBaseline(**prev)
            if not baseline_is_stale(base, max_age_s=self.cfg.measurement.baseline_max_age_s, now=time.time()):
                recheck = measure_idle_power(gpus, min(3.0, secs))
                if not baseline_drifted(base, recheck, threshold_rel=self.cfg.measurement.baseline_drift_rel):
                    self.device_idle = prev
                    return
                self.device_idle_flags = ["IDLE_BASELINE_DRIFTED"]
        self.display.set_context(label="device idle reference", phase=f"{secs:.0f} s")
        base = measure_idle_power(gpus, secs)
        from dataclasses import asdict

        self.device_idle = asdict(base)
        self.store.update_manifest(device_idle=self.device_idle)
        self.display.log(f"device idle: {base.power_w:.1f} W over {len(gpus)} GPU(s)"
                         if base.power_w is not None else "device idle: no counter")

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

    def _idle_busy_check(self) -> None:
        """No device idle reference while other users are on the GPUs: wait (bounded) or stop."""
        policy = self.busy_gate.policy
        if not self.busy_gate_enabled or policy == "allow" or self.cfg.measurement.device_idle_s <= 0:
            return
        try:
            gpus = self._study_gpus()
        except Exception:  # noqa: BLE001 - _device_idle_reference reports it
            return
        self.busy_gate.policy = "stop" if policy == "stop" else "wait"
        try:
            d = self.busy_gate.check(gpus, label="device idle reference")
        finally:
            self.busy_gate.policy = policy
        if d.action == "stop":
            raise GpuBusy(f"GPUs in use by other processes ({d.note.get('detail')}) before the device idle "
                          f"reference, busy_gpu: {policy}")

    def _busy_check(self, r: int, configs: list[Configuration], tids: list[str]) -> bool:
        """Before an experiment: other users on its GPUs? True: run it; False: deferred; GpuBusy: stop."""
        self._busy_note = None
        if not self.busy_gate_enabled:
            return True
        try:
            gpus = experiment_gpus(configs[0].params)
        except Exception as e:  # noqa: BLE001 - the worker reports device problems in the record
            self.display.log(f"busy-GPU check skipped: {e}")
            return True
        # A worker of ours kept alive between rounds holds memory on these GPUs: not another user.
        own = self.runner.live_pids() if self.capabilities.host_processes else set()
        d = self.busy_gate.check(gpus, own_pids=own, label=f"round {r + 1} · {configs[0].load_group}")
        if d.action == "defer":
            for t in tids:
                self._deferred[t] = {**d.note, "round": r}
            return False
        if d.action == "stop":
            raise GpuBusy(f"GPUs in use by other processes ({d.note.get('detail')}), busy_gpu: "
                          f"{self.busy_gate.policy}")
        self._busy_note = d.note or None
        return True

    def _note_busy(self, eid: str, tids: list[str]) -> None:
        """Say in the records what the busy-GPU check saw and did (``preflight.busy_gpu``)."""
        records = self.store.records_by_id()
        for t in tids:
            rec = records.get(t)
            note = dict(self._busy_note or {})
            if t in self._deferred:
                note["deferred"] = self._deferred[t]
            if not note or not rec or rec.get("experiment_id") != eid:
                continue
            rec["preflight"] = {**(rec.get("preflight") or {}), "busy_gpu": note}
            self.store.write_record(rec)

    def _experiment_spec(self, experiment_id: str, r: int, configs: list[Configuration]) -> ExperimentSpec:
        measurement = self.cfg.measurement
        if self.busy_gate.policy == "allow":   # measure beside other users; the worker flags foreign_process
            measurement = measurement.model_copy(update={"allow_foreign_processes": True})
        return ExperimentSpec(
            experiment_id=experiment_id, study=self.cfg.name, round=r,
            base_dir=str(self.loaded.base_dir), seed=self.cfg.seed,
            trust_remote_code=self.cfg.trust_remote_code,
            measurement=measurement,
            device_idle=self.device_idle, device_idle_flags=list(self.device_idle_flags),
            thermal_reference_c=self.store.read_manifest().get("thermal_reference_c"),
            trials=[TrialSpec(trial_id=trial_id_for(c.config_id, r), config_id=c.config_id, repeat=r, round=r,
                              params=c.params) for c in configs],
        )

    def _run_experiment(self, r: int, configs: list[Configuration]) -> ExperimentOutcome:
        with self._attempt_lock:
            self._attempt += 1
            attempt = self._attempt
        group = configs[0].load_group
        eid = f"r{r}-{group}-{self._run_tag}{attempt:03d}"
        spec = self._experiment_spec(eid, r, configs)
        key, python = self._worker_key(configs[0])
        exp = Experiment(experiment_id=eid, study_name=self.cfg.name, study_dir=self.store.root, spec=spec,
                         trial_ids=spec.trial_ids,
                         label=f"{configs[0].params['backend']} {configs[0].params['model']}", python=python,
                         worker_key=key, gpus=self._experiment_gpus(configs[0]))
        labels = {t.trial_id: c.label(self.axes) for t, c in zip(spec.trials, configs)}

        announced: set[str] = set()

        def on_event(ev: Event) -> None:
            if isinstance(ev, ExperimentEndEvent) and ev.error:
                # the experiment failed before its trials ran (a load failure): each trial's reason, once
                for tid in exp.trial_ids:
                    summary = None if tid in announced else self._trial_summary(tid)
                    if summary:
                        announced.add(tid)
                        self.display.advance(summary)
            if isinstance(ev, TrialStartEvent):
                self._in_flight = ev.trial_id
                self.display.set_context(label=f"round {r + 1} · {labels.get(self._in_flight, '')}", phase="")
            elif isinstance(ev, TrialEndEvent):
                announced.add(ev.trial_id)
                self._in_flight = None
                self.display.advance(self._trial_summary(ev.trial_id))
            elif isinstance(ev, PhaseEvent) and ev.phase == Phase.LOAD:
                self.display.set_context(label=f"round {r + 1} · loading {exp.label}", phase=Phase.LOAD.value)
            self.display.event(ev)

        try:
            outcome = self.runner.run_experiment(exp, on_event=on_event,
                                                 timeout_s=self.cfg.runner_options.timeout_s)
        except KeyboardInterrupt:
            if self._in_flight and self._in_flight not in self._done():
                c = {trial_id_for(c.config_id, r): c for c in configs}[self._in_flight]
                self._mark_failed(c, r, "interrupted by the user; resume runs it again", ErrorKind.INTERRUPTED,
                                  None)
            raise
        self._note_busy(eid, exp.trial_ids)
        if outcome.error:
            self.display.log(f"experiment {eid}: {outcome.error}")
        self._remember_thermal_reference()
        return outcome

    def _remember_thermal_reference(self) -> None:
        m = self.store.read_manifest()
        if m.get("thermal_reference_c") is not None:
            return
        for rec in self.store.iter_records():
            t = (rec.get("thermal") or {}).get("start_temperature_c")
            if rec.get("status") == "ok" and t is not None:
                self.store.update_manifest(thermal_reference_c=t)
                return

    def _mark_failed(self, c: Configuration, r: int, error: str, kind: ErrorKind,
                     outcome: ExperimentOutcome | None) -> None:
        tid = trial_id_for(c.config_id, r)
        self._failed_now.add(tid)
        rec = TrialRecord(trial_id=tid, config_id=c.config_id, study=self.cfg.name, params=c.params, repeat=r,
                          round=r, status="failed", error=error, error_kind=kind, finished_at=time.time(),
                          experiment_id=outcome.experiment_id if outcome else None,
                          schema_version=SCHEMA_VERSION).model_dump(mode="json")
        if outcome and outcome.log_tail:
            (self.store.logs_dir / f"{tid}.log").write_text(outcome.log_tail)
        self.store.write_record(rec)
        self.display.advance(f"trial {tid} failed ({ErrorKind(kind).value}): {error}")

    def _trial_summary(self, tid: str | None) -> str | None:
        if not tid:
            return None
        try:
            rec = json.loads(self.store.trial_path(tid).read_text())
        except Exception:  # noqa: BLE001
            return None
        if rec.get("status") != "ok":
            return f"trial {tid} failed: {rec.get('error')}"
        e = rec.get("energy_per_output_token_j")
        tps = rec.get("throughput_tok_s") or 0
        en = f"{e:.4g} J/tok" if e is not None else "energy n/a"
        return f"trial {tid} ok: {tps:.1f} tok/s, {en}, {rec.get('duration_s', 0):.1f} s window"


# ---------------------------------------------------------------------- entry points
def _prepare_new_study(loaded: LoadedStudy, plan: Plan, study_dir: Path, source_path: str | None) -> StudyStore:
    store = StudyStore(study_dir)
    if (study_dir / "manifest.json").exists():
        raise JoulebenchError(f"{study_dir} already holds a study; use `joulebench resume {study_dir}` "
                              "or choose another --out")
    store.create()
    atomic_write_bytes(study_dir / "study.yaml", loaded.text.encode())
    atomic_write_json(study_dir / "plan.json", plan.to_json())
    store.update_manifest(study=plan.study, created_at=time.time(), joulebench_version=__version__,
                          study_sha256=sha256_bytes(loaded.text.encode()), source_path=source_path,
                          base_dir=str(loaded.base_dir), plan_fingerprint=plan.fingerprint(),
                          runner=loaded.config.runner, status="planned")
    return store


def run_study(source, *, out: str | Path | None = None, runner: str | None = None, quiet: bool = False,
              display: Display | None = None, report: bool = True, on_busy_lock: str | None = None,
              lock_wait_s: float | None = None) -> StudyResult:
    loaded = source if isinstance(source, LoadedStudy) else load_study(source)
    plan = build_plan(loaded)
    study_dir = Path(out) if out else default_study_dir(loaded.config.name)
    display = display or Display(quiet=quiet)
    source_path = str(Path(source).resolve()) if isinstance(source, (str, Path)) else None
    kind = resolve_kind(runner or loaded.config.runner, display.log)
    with _device_lock(loaded, plan, study_dir, kind, on_busy_lock, lock_wait_s, display), StudyLock(study_dir):
        _prepare_new_study(loaded, plan, study_dir, source_path)
        result = _execute(loaded, plan, study_dir, kind, display)
    if report:
        _report(study_dir, display)
    return result


def resume_study(study_dir: str | Path, *, runner: str | None = None, quiet: bool = False,
                 display: Display | None = None, retry_failed: bool = False, report: bool = True,
                 on_busy_lock: str | None = None, lock_wait_s: float | None = None) -> StudyResult:
    study_dir = Path(study_dir)
    store = StudyStore(study_dir)
    manifest = store.read_manifest()
    if not manifest or not (study_dir / "study.yaml").exists():
        raise ResumeError(f"{study_dir} is not a joulebench study directory (no manifest.json / study.yaml)")
    text = (study_dir / "study.yaml").read_text()
    src = manifest.get("source_path")
    if src and Path(src).exists():
        current = Path(src).read_bytes()
        if sha256_bytes(current) != manifest.get("study_sha256"):
            raise ResumeError(f"the study file {src} changed since this study started; resuming would mix two "
                              "different studies. Restore the file, or start a new study with `joulebench run`")
    base_dir = Path(manifest.get("base_dir") or study_dir)
    loaded = parse_study_text(text, file=str(study_dir / "study.yaml"), base_dir=base_dir)
    plan = build_plan(loaded)
    if plan.fingerprint() != manifest.get("plan_fingerprint"):
        raise ResumeError("the plan of this study differs from the one it started with (another joulebench "
                          "version?); start a new study instead")
    display = display or Display(quiet=quiet)
    kind = resolve_kind(runner or loaded.config.runner, display.log)
    with _device_lock(loaded, plan, study_dir, kind, on_busy_lock, lock_wait_s, display), StudyLock(study_dir):
        result = _execute(loaded, plan, study_dir, kind, display, retry_failed=retry_failed)
    if report:
        _report(study_dir, display)
    return result


def _execute(loaded: LoadedStudy, plan: Plan, study_dir: Path, kind: RunnerKind, display: Display, *,
             retry_failed: bool = False) -> StudyResult:
    runner = make_runner(kind, loaded.config.runner_options)
    orch = Orchestrator(loaded, plan, study_dir, runner, display)
    orch.retry_failed = retry_failed
    return orch.run()


def _device_lock(loaded: LoadedStudy, plan: Plan, study_dir: Path, kind: RunnerKind, policy: str | None,
                 wait_s: float | None, display: Display):
    """One joulebench per set of GPUs on this host (locks.py); none for Ray (the cluster schedules GPUs).
    A study whose GPUs lie outside ``runner_options.gpus`` is refused here, before anything runs."""
    import contextlib

    if not capabilities(kind).host_gpus:
        return contextlib.nullcontext()
    _check_gpu_fence(plan, loaded)
    return study_lock(plan, loaded.config, study_dir=study_dir, policy=policy, wait_s=wait_s, log=display.log)


def _check_gpu_fence(plan: Plan, loaded: LoadedStudy) -> None:
    """``runner_options.gpus``: refuse (exit 2) a study whose configurations use a host GPU outside it."""
    from joulebench.errors import StudyError

    fence = loaded.config.runner_options.gpus
    if fence is None:
        return
    used = []
    for c in plan.configs:
        try:
            used.append((c.origin, DeviceSpec.of(c.params).resolve()))
        except JoulebenchError:
            continue   # not resolvable here (no NVML): the plan checked its ordinals, the worker reports
    problems = fence_violations(fence, used)
    if problems:
        raise StudyError("; ".join(problems), file=loaded.file, path="runner_options.gpus",
                         hint="set device to a GPU inside the fence (cuda:N), or widen runner_options.gpus")


def _report(study_dir: Path, display: Display) -> None:
    try:
        from joulebench.report.build import build_report
    except ImportError:
        return
    try:
        path = build_report(study_dir)
        display.log(f"report: {path}")
    except Exception as e:  # noqa: BLE001 - the results are safe on disk; the report can be rebuilt
        display.log(f"could not build the report ({type(e).__name__}: {e}); "
                    f"run `joulebench report {study_dir}` to retry")
