"""What the user sees while a study runs: a rich progress display on a terminal,
plain timestamped log lines otherwise (cron, CI, --quiet)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from joulebench.spec import Event, PhaseEvent


class Display:
    def __init__(self, *, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.plain = quiet or not self.console.is_terminal
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None
        self.label = ""
        self.phase = ""

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.log(message)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            print(f"{stamp} {message}", file=sys.stderr, flush=True)

    def start(self, total: int, description: str) -> None:
        if self.plain:
            self.log(f"{description}: {total} trials planned")
            return
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def set_context(self, label: str | None = None, phase: str | None = None) -> None:
        if label is not None:
            self.label = label
        if phase is not None:
            self.phase = phase
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.label} [dim]{self.phase}[/dim]")

    def advance(self, message: str | None = None) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
        if message and (self.plain or not self.quiet):
            self.log(message)

    def event(self, ev: Event) -> None:
        if isinstance(ev, PhaseEvent):
            self.set_context(phase=ev.phase.value)
            if self.plain and not self.quiet:
                self.log(f"  phase {ev.phase.value} {ev.trial_id or ''}".rstrip())

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
