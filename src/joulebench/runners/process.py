"""Process runner: each experiment in a freshly spawned local worker process.

Never forked: the worker is a new interpreter (``python -m joulebench.worker.main``),
optionally another interpreter (an engine environment's venv), so CUDA state and
engine globals never leak between experiments. The worker runs in its own process
group and gets SIGTERM if the orchestrator dies (Linux parent-death signal), so a
``kill -9`` of the orchestrator leaves nothing running.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from joulebench.results.store import atomic_write_bytes, atomic_write_json
from joulebench.runners.base import EventCallback, Experiment, ExperimentOutcome, ReusingRunner
from joulebench.spec import (ErrorKind, Event, ExperimentEndEvent, ExperimentSpec, ExperimentStartEvent,
                             TrialEndEvent, TrialStartEvent, WorkerExit, parse_event)
from joulebench.system.proc import descendants, set_parent_death_signal

TERM_GRACE_S = 10.0


def kill_group(proc: subprocess.Popen, grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the worker's process group, then SIGKILL what is left after `grace_s`."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # reap grandchildren (engine servers)
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # The worker must import this joulebench even from an engine venv with only --no-deps installs.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


class ProcessRunner(ReusingRunner):
    """Experiments in spawned local workers. With ``worker_key`` set on an experiment, the worker
    stays alive after it and serves the next experiment of the same key (the same load group in
    the next round) through its inbox, so the model is loaded once (policy: ``ReusingRunner``)."""

    name = "process"

    def __init__(self, python: str | None = None, *, idle_timeout_s: float = 1800.0):
        self.python = python
        self.idle_timeout_s = idle_timeout_s
        self._worker: WorkerProcess | None = None
        self._seq = 0

    def live_pids(self) -> set[int]:
        """Processes of the worker kept alive between experiments (their GPU use is ours)."""
        w = self._worker
        return w.pids() if w is not None and w.alive() else set()

    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        write_spec(self._spec_path(experiment), experiment.spec)
        return super().run_experiment(experiment, on_event=on_event, timeout_s=timeout_s)

    @staticmethod
    def _spec_path(experiment: Experiment) -> Path:
        return Path(experiment.study_dir) / "experiments" / f"{experiment.experiment_id}.json"

    def _spawn(self, study_dir: Path, tag: str, python: str | None, *, spec_path: Path | None = None,
               key: str | None = None, preload: str | None = None) -> "WorkerProcess":
        """A worker process (not started yet); with ``key``, an inbox for the experiments after its first."""
        study_dir = Path(study_dir)
        (study_dir / "logs").mkdir(parents=True, exist_ok=True)
        cmd = [python or self.python or sys.executable, "-m", "joulebench.worker.main"]
        cmd += [str(spec_path)] if spec_path is not None else []
        cmd += ["--out", str(study_dir)]
        inbox = None
        if key:
            inbox = study_dir / "experiments" / f"inbox-{tag}"
            inbox.mkdir(parents=True, exist_ok=True)
            cmd += ["--inbox", str(inbox), "--idle-timeout-s", f"{self.idle_timeout_s:g}"]
        if preload:
            cmd += ["--preload", preload]
        return WorkerProcess(cmd, env=worker_environment(), log_path=study_dir / "logs" / f"{tag}.log",
                             inbox=inbox, key=key)

    def _launch(self, experiment: Experiment, *, serve: bool):
        w = self._spawn(experiment.study_dir, experiment.experiment_id, experiment.python,
                        spec_path=self._spec_path(experiment), key=experiment.worker_key if serve else None)
        err = w.start()
        if err:
            return None, ExperimentOutcome(experiment.experiment_id, None, error=err,
                                           error_kind=ErrorKind.INFRASTRUCTURE)
        return w, None

    def _send(self, handle: "WorkerProcess", experiment: Experiment) -> None:
        self._seq += 1
        handle.send(experiment.spec, self._seq)

    def _follow(self, handle: "WorkerProcess", experiment: Experiment, on_event: EventCallback,
                timeout_s: float | None, *, until_end: bool) -> ExperimentOutcome:
        return handle.follow(experiment, on_event=on_event, timeout_s=timeout_s, until_end=until_end)

    def _discard(self, handle: "WorkerProcess") -> None:
        handle.kill()

    def _stop_idle(self, handle: "WorkerProcess") -> None:
        handle.stop()

    def prestart(self, study_dir: Path, *, worker_key: str, python: str | None, backend: str) -> None:
        """Start the first worker early (it imports its engine, touching no device) and keep it for
        the first experiment with ``worker_key``; the orchestrator measures the device idle meanwhile."""
        self._retire()
        self._seq += 1
        w = self._spawn(study_dir, f"worker-{os.getpid()}-{self._seq}", python, key=worker_key, preload=backend)
        if w.start() is None:
            self._worker = w


@dataclass
class _FollowState:
    """What ``WorkerProcess.follow`` learns from one experiment's events (each also passed on)."""
    experiment_id: str
    on_event: EventCallback
    finished: list[str] = field(default_factory=list)
    in_flight: str | None = None
    started: bool = False
    end: ExperimentEndEvent | None = None

    def handle(self, ev: Event) -> None:
        if isinstance(ev, ExperimentStartEvent) and ev.experiment_id == self.experiment_id:
            self.started = True
        elif isinstance(ev, TrialStartEvent):
            self.in_flight = ev.trial_id
        elif isinstance(ev, TrialEndEvent):
            self.finished.append(ev.trial_id)
            self.in_flight = None
        elif isinstance(ev, ExperimentEndEvent) and ev.experiment_id == self.experiment_id:
            self.end = ev
        try:
            self.on_event(ev)
        except Exception:  # noqa: BLE001 - a display problem never stops a study
            pass


class WorkerProcess:
    """One spawned worker: its events on a queue, its log file, its inbox (when it serves several)."""

    def __init__(self, cmd: list[str], *, env: dict[str, str], log_path: Path, inbox: Path | None = None,
                 key: str | None = None):
        self.cmd, self.env = cmd, env
        self.log_path = Path(log_path)
        self.inbox = inbox
        self.key = key
        self.proc: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self._log = None
        self._reader: threading.Thread | None = None

    def start(self) -> str | None:
        self._log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True, preexec_fn=set_parent_death_signal)
        except OSError as e:
            self._log.close()
            return f"cannot start worker {self.cmd[0]}: {e}"
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        return None

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            ev = parse_event(raw.decode("utf-8", "replace"))
            if ev is None:
                try:
                    self._log.write(raw)
                    self._log.flush()
                except (ValueError, OSError):
                    pass
                continue
            self.events.put(ev)
        self.events.put(None)   # end of stream

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """The worker and all its descendants (the sampler, engine servers in sessions of their own)."""
        if self.proc is None:
            return set()
        return descendants(self.proc.pid)

    def send(self, spec: ExperimentSpec, seq: int) -> None:
        """Hand the idle worker its next experiment (an atomic file in its inbox)."""
        assert self.inbox is not None
        write_spec(self.inbox / f"{seq:06d}-{spec.experiment_id}.json", spec)

    def follow(self, experiment: Experiment, *, on_event: EventCallback, timeout_s: float | None,
               until_end: bool) -> ExperimentOutcome:
        """Pass the experiment's events on until it ends (``until_end``: its experiment_end event;
        else the process exit), the worker dies, or the timeout passes."""
        seen = _FollowState(experiment.experiment_id, on_event)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        assert self.proc is not None
        timed_out = self._relay(seen, deadline, until_end)
        if not self.alive():
            if self._reader is not None:
                self._reader.join(timeout=5)
            while True:   # events still queued when the process ended
                try:
                    ev = self.events.get_nowait()
                except queue.Empty:
                    break
                if ev:
                    seen.handle(ev)
        rc = self.proc.poll()
        outcome = ExperimentOutcome(seen.experiment_id, rc, finished=seen.finished, in_flight=seen.in_flight,
                                    log_tail=_tail(self.log_path))
        outcome.started = seen.started
        outcome.reusable = seen.end is not None and not seen.end.error and rc is None
        if timed_out:
            outcome.error, outcome.error_kind = f"worker timed out after {timeout_s:.0f} s", ErrorKind.TIMEOUT
        elif rc is not None and rc not in (WorkerExit.OK, WorkerExit.LOAD_FAILED):   # load failed: recorded
            outcome.error = f"worker exited with {_describe_rc(rc)}"
            outcome.error_kind = ErrorKind.CRASH
        elif rc is not None and until_end and seen.end is None and rc == WorkerExit.OK:
            outcome.error = "worker exited before it finished the experiment"
            outcome.error_kind = ErrorKind.CRASH
        return outcome

    def _relay(self, seen: _FollowState, deadline: float | None, until_end: bool) -> bool:
        """Hand events to ``seen`` until the end (see ``follow``); True when the deadline passed
        (the worker's group is then killed)."""
        eos = False
        while True:
            try:
                ev = self.events.get(timeout=0.05)
            except queue.Empty:
                ev = False
            if ev is None:
                eos = True
            elif ev:
                seen.handle(ev)
                if until_end and seen.end is not None:
                    return False
                continue
            if eos and self.proc.poll() is not None:
                return False
            if deadline is not None and time.monotonic() > deadline:
                kill_group(self.proc)
                return True
            if eos:
                try:
                    self.proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self, grace_s: float = TERM_GRACE_S) -> None:
        """Ask an idle worker to finish (it closes its engine and sampler), then make sure it is gone."""
        if self.inbox is not None and self.alive():
            try:
                atomic_write_json(self.inbox / "stop", {"stop": True})
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, grace_s=2)
            if self._reader is not None:
                self._reader.join(timeout=2)
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
        if self.inbox is not None:
            shutil.rmtree(self.inbox, ignore_errors=True)


def _describe_rc(rc: int | None) -> str:
    if rc is None:
        return "no exit code"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    if rc == 137:
        return "code 137 (killed: out of memory?)"
    return f"code {rc}"


def _tail(path: Path, n: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace")


def write_spec(path: Path, spec: ExperimentSpec) -> None:
    """EXPERIMENT.json (or an inbox file) as the worker reads it: ``ExperimentSpec.from_json``."""
    atomic_write_bytes(path, spec.to_json().encode())


def read_spec(path: Path) -> ExperimentSpec:
    return ExperimentSpec.from_json(Path(path).read_bytes())
