"""Start an OpenAI-compatible inference server as a child process, and always stop it.

The server runs in its own process group (so its own workers can be signalled
together) on loopback with a private free port. It is stopped by PID: SIGTERM to
the group, then SIGKILL after a bound. Three safety nets make sure no server is
left running: ``close()`` (called by the backend), an ``atexit`` hook plus
SIGTERM/SIGHUP handlers in this process, and on Linux ``PR_SET_PDEATHSIG`` so
the kernel signals the server when the process that started it dies, even by
SIGKILL.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

from joulebench.errors import BackendError
from joulebench.system.proc import set_parent_death_signal

_LIVE: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()
_HANDLERS_INSTALLED = False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _install_handlers() -> None:
    """Stop servers at interpreter exit and on SIGTERM/SIGHUP (then re-raise the default)."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)

        def handler(signum, frame, _previous=previous):
            _stop_all()
            if callable(_previous):
                _previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass


class ServerProcess:
    """One running server. Use as a context manager or call ``stop()``."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None,
                 log_path: Path | None = None, stop_timeout_s: float = 15.0):
        if not command or not all(isinstance(c, str) for c in command):
            raise ValueError("server command must be a non-empty list of strings")
        self.command = list(command)
        self.stop_timeout_s = stop_timeout_s
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="joulebench-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        _install_handlers()
        self.proc = subprocess.Popen(
            self.command, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=set_parent_death_signal if sys.platform.startswith("linux") else None,
        )
        self.pid = self.proc.pid
        _LIVE.add(self)

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_chars:].decode("utf-8", "replace")

    def wait_ready(self, ready: Callable[[], bool], *, timeout_s: float, what: str = "server") -> float:
        """Poll ``ready()`` until it is true; fail early if the process exits. Returns seconds waited."""
        t0 = time.perf_counter()
        delay = 0.1
        while True:
            if not self.running():
                raise BackendError(f"{what} exited with code {self.proc.returncode} before it was ready "
                                   f"(command: {' '.join(self.command)})\n--- server log tail ---\n{self.log_tail()}")
            try:
                if ready():
                    return time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise BackendError(f"{what} was not ready after {timeout_s:.0f} s (stopped it)\n"
                                   f"--- server log tail ---\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after ``stop_timeout_s``. Idempotent. Returns the exit code."""
        proc = self.proc
        if proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        # Children that outlived the leader (same group) get killed too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _LIVE.discard(self)
        if not self._log.closed:
            self._log.close()
        return proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
