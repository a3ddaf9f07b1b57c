"""A running experiment container and what follows it: its log stream (the worker's events), its
exit, the heartbeat of a serving container, and the reading of how an experiment ended.

A container that serves its load group (model loaded, worker idle) reads the next experiment's spec
from an inbox in its mounted staging folder and ends itself on a ``stop`` file, after
``--idle-timeout-s``, or when the dispatcher's heartbeat file goes stale (a crash or kill -9 of the
dispatcher).
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joulebench.spec import (ErrorKind, Event, ExperimentEndEvent, ExperimentStartEvent, TrialEndEvent,
                             TrialStartEvent, WorkerExit, parse_event)
from joulebench.runners.docker.client import api_message
from joulebench.runners.docker.mounts import CONTAINER_OUT, HEARTBEAT, INBOX

log = logging.getLogger(__name__)



@dataclass
class LiveContainer:
    """A running experiment container and what follows it."""

    key: str | None
    staging: Path
    container: Any = None
    secret_dir: Path | None = None
    heartbeat_path: Path | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=400))
    waited: dict[str, Any] = field(default_factory=dict)
    reader: threading.Thread | None = None
    waiter: threading.Thread | None = None
    beat: threading.Thread | None = None
    beat_stop: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    created_at: float = 0.0          # monotonic time of the create call (start cost)
    first_for: Any = None            # the experiment that started it, until its first event arrives

    def alive(self) -> bool:
        return self.waiter is not None and self.waiter.is_alive()

    def follow(self, name: str, heartbeat_every_s: float) -> None:
        """Start the threads that read its log, wait for its exit and beat its heartbeat."""
        self.reader = threading.Thread(target=read_logs, args=(self.container, self.tail, self.events),
                                       name=f"logs-{name}", daemon=True)
        self.reader.start()
        self.waiter = threading.Thread(target=wait, args=(self.container, self.waited), daemon=True)
        self.waiter.start()
        if self.heartbeat_path is not None:
            self.beat = threading.Thread(target=heartbeat, args=(self.heartbeat_path, self.beat_stop,
                                                                 heartbeat_every_s),
                                         name=f"heartbeat-{name}", daemon=True)
            self.beat.start()


def serve_args(idle_timeout_s: float, heartbeat_timeout_s: float) -> list[str]:
    """The worker's extra arguments to serve its load group from the inbox."""
    return ["--inbox", f"{CONTAINER_OUT}/{INBOX}", "--idle-timeout-s", f"{idle_timeout_s:g}",
            "--heartbeat", f"{CONTAINER_OUT}/{INBOX}/{HEARTBEAT}",
            "--heartbeat-timeout-s", f"{heartbeat_timeout_s:g}"]


def heartbeat(path: Path, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        try:
            os.utime(path)
        except OSError:
            return


def wait(container, result: dict[str, Any]) -> None:
    try:
        r = container.wait()
        result["code"] = int(r.get("StatusCode", -1))
    except Exception as exc:   # the engine went away or the container was removed under us
        result["error"] = api_message(exc)


def _take_line(line: str, tail: collections.deque, events: queue.Queue) -> None:
    tail.append(line + "\n")
    ev = parse_event(line)
    if ev is not None:
        events.put(ev)


def read_logs(container, tail: collections.deque, events: queue.Queue) -> None:
    """The container's output into ``tail``, the worker's events into ``events``, until it ends."""
    buf = b""
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                _take_line(raw.decode("utf-8", "replace"), tail, events)
    except Exception as exc:
        tail.append(f"[joulebench] log stream ended: {api_message(exc)}\n")
    if buf:
        _take_line(buf.decode("utf-8", "replace"), tail, events)


@dataclass
class Progress:
    """What the worker's events said about one experiment so far."""

    experiment_id: str
    started: bool = False
    end: ExperimentEndEvent | None = None  # its experiment_end event
    in_flight: str | None = None           # the trial begun and not ended
    ended: set = field(default_factory=set)

    def take(self, ev: Event) -> str | None:
        """Note one event; returns the trial id of a trial_end (its record is ready to merge)."""
        if isinstance(ev, ExperimentStartEvent) and ev.experiment_id == self.experiment_id:
            self.started = True
        elif isinstance(ev, ExperimentEndEvent) and ev.experiment_id == self.experiment_id:
            self.end = ev
        elif isinstance(ev, TrialStartEvent):
            self.in_flight = ev.trial_id
        elif isinstance(ev, TrialEndEvent):
            self.ended.add(ev.trial_id)
            if self.in_flight == ev.trial_id:
                self.in_flight = None
            return ev.trial_id
        return None

    @property
    def ended_cleanly(self) -> bool:
        return self.end is not None and not self.end.error


def failure(progress: Progress, *, exit_code: int | None, ended: bool,
            until_end: bool) -> tuple[str, ErrorKind] | None:
    """(error, kind) of an experiment whose container is followed to its end, or None when it went well."""
    if ended and exit_code not in (WorkerExit.OK, None):
        if until_end and progress.end is not None and exit_code == WorkerExit.LOAD_FAILED:
            return None   # the load failed: the worker recorded it in the trials
        return f"worker exited with code {exit_code}", ErrorKind.CRASH
    if until_end and ended and progress.end is None:
        return "the container ended before it finished the experiment", ErrorKind.CRASH
    return None


def oom_hint(container, code: int | None) -> str:
    if code == 137:
        try:
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                return " (killed at the container memory limit: raise ContainerSettings.mem_limit)"
        except Exception:
            pass
        return " (SIGKILL: memory limit or an outside kill)"
    return ""
