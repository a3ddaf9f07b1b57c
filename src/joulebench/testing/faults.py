"""Fault injection for the crash-safety tests: ``JOULEBENCH_FAULT=crash|hang|error:<trial_id>`` makes the
worker die (SIGKILL), hang or raise when that trial's measured window starts."""
from __future__ import annotations

import os
import signal
import time

FAULT_ENV = "JOULEBENCH_FAULT"


def inject_fault(trial_id: str) -> None:
    """Do what ``$JOULEBENCH_FAULT`` asks for ``trial_id``; nothing when it names another trial or is unset."""
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, target = spec.partition(":")
    if not spec or target != trial_id:
        return
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "hang":
        while True:
            time.sleep(1)
    elif kind == "error":
        raise RuntimeError(f"injected error in trial {trial_id}")
