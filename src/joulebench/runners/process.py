"""Process runner: each experiment in a freshly spawned local worker process.

Never forked: the worker is a new interpreter (``python -m joulebench.runners.worker``),
optionally another interpreter (an engine environment's venv), so CUDA state and
engine globals never leak between experiments. The worker runs in its own process
group and gets SIGTERM if the orchestrator dies (Linux parent-death signal), so a
``kill -9`` of the orchestrator leaves nothing running.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..results.store import atomic_write_json
from .base import EventCallback, Experiment, ExperimentOutcome, Runner, parse_event

TERM_GRACE_S = 10.0


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the broken pipe still stops the worker
        pass


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


class ProcessRunner(Runner):
    name = "process"

    def __init__(self, python: str | None = None):
        self.python = python

    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        study_dir = Path(experiment.study_dir)
        spec_path = study_dir / "experiments" / f"{experiment.experiment_id}.json"
        atomic_write_json(spec_path, experiment.spec)
        log_path = study_dir / "logs" / f"{experiment.experiment_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        python = experiment.python or self.python or sys.executable
        cmd = [python, "-m", "joulebench.runners.worker", str(spec_path), "--out", str(study_dir)]
        return run_worker_process(cmd, experiment, on_event=on_event, timeout_s=timeout_s, log_path=log_path,
                                  env=worker_environment())


def run_worker_process(cmd: list[str], experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None, log_path: Path, env: dict[str, str],
                       cwd: str | None = None) -> ExperimentOutcome:
    """Start a worker command, follow its events, enforce the timeout, clean up always."""
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_set_parent_death_signal)
    except OSError as e:
        log.close()
        return ExperimentOutcome(experiment.experiment_id, None, error=f"cannot start worker {cmd[0]}: {e}",
                                 error_kind="infrastructure")
    state: dict[str, Any] = {"finished": [], "in_flight": None, "lines": []}

    def pump():
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            ev = parse_event(line)
            if ev is None:
                log.write(raw)
                log.flush()
                continue
            if ev.get("event") == "trial_start":
                state["in_flight"] = ev.get("trial_id")
            elif ev.get("event") == "trial_end":
                state["finished"].append(ev.get("trial_id"))
                state["in_flight"] = None
            try:
                on_event(ev)
            except Exception:  # noqa: BLE001 - a display problem never stops a study
                pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    timed_out = False
    try:
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                kill_group(proc)
                break
            time.sleep(0.05)
    except BaseException:
        kill_group(proc)
        reader.join(timeout=2)
        log.close()
        raise
    reader.join(timeout=5)
    kill_group(proc, grace_s=2)  # engine servers or other grandchildren left behind
    log.close()
    rc = proc.returncode
    outcome = ExperimentOutcome(experiment.experiment_id, rc, finished=list(state["finished"]),
                                in_flight=state["in_flight"], log_tail=_tail(log_path))
    if timed_out:
        outcome.error, outcome.error_kind = f"worker timed out after {timeout_s:.0f} s", "timeout"
    elif rc not in (0, 3):
        outcome.error = f"worker exited with {_describe_rc(rc)}"
        outcome.error_kind = "crash"
    return outcome


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


def read_spec(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
