"""The driver's view of one running Ray task: it lands the events, trials and outcome a node ships."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joulebench.results.requests import requests_trace_path
from joulebench.results.store import StudyStore, atomic_write_bytes
from joulebench.runners.base import EventCallback, ExperimentOutcome
from joulebench.spec import Event, EventItem, OutcomeItem, RayItem, TrialItem, TrialStartEvent


@dataclass
class TaskState:
    """What the driver knows of one running Ray task: its node, finished trials, the trial in flight."""
    experiment_id: str
    store: StudyStore
    on_event: EventCallback
    node: dict[str, Any] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    in_flight: str | None = None

    def outcome(self, exit_code: int | None = None, in_flight: str | None = None, **kw: Any) -> ExperimentOutcome:
        return ExperimentOutcome(self.experiment_id, exit_code, self.finished, in_flight or self.in_flight, **kw)

    def take(self, item: RayItem) -> ExperimentOutcome | None:
        """Land an event, a trial or the outcome (then returned) shipped by the node."""
        if isinstance(item, EventItem):
            if isinstance(item.event, TrialStartEvent):
                self.in_flight = item.event.trial_id
            safe_call(self.on_event, item.event)
        elif isinstance(item, TrialItem):
            land_trial(self.store, item)
            self.finished.append(item.event.trial_id)
            self.in_flight = None
            safe_call(self.on_event, item.event)
        elif isinstance(item, OutcomeItem):
            if item.log:
                atomic_write_bytes(self.store.logs_dir / f"{self.experiment_id}.log", item.log)
            return self.outcome(item.exit_code, item.in_flight, error=item.error, error_kind=item.error_kind,
                                log_tail=item.log_tail)
        return None


def land_trial(store: StudyStore, item: TrialItem) -> None:
    """Write a shipped trial into the study directory: timeline and requests trace first, then the record."""
    tid = item.event.trial_id
    if item.timeseries is not None:
        atomic_write_bytes(store.timeseries_dir / f"{tid}.parquet", item.timeseries)
    if item.requests_trace is not None:
        atomic_write_bytes(store.root / requests_trace_path(tid), item.requests_trace)
    for name, data in item.logs.items():
        atomic_write_bytes(store.logs_dir / Path(name).name, data)
    if item.record:
        store.write_record(item.record)


def safe_call(cb: EventCallback, ev: Event) -> None:
    try:
        cb(ev)
    except Exception:  # noqa: BLE001 - a display problem never stops a study
        pass
