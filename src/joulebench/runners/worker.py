"""The worker: the side that runs inside a spawned process, a container or a Ray task.

    python -m joulebench.runners.worker EXPERIMENT.json --out OUTDIR

It reads the experiment spec, runs the protocol for each of its trials and writes
records under OUTDIR. Events go to stdout as JSON lines (see runners/base.py);
engine chatter goes wherever the engine prints it. SIGTERM and SIGINT end the worker
promptly (the trial in flight is not recorded: the orchestrator marks it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .base import format_event


def _emit_to(stream):
    def emit(event):
        stream.write(format_event(event) + "\n")
        stream.flush()

    return emit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="joulebench-worker")
    ap.add_argument("experiment", help="experiment spec (JSON)")
    ap.add_argument("--out", required=True, help="output folder (trials/, timeseries/, logs/)")
    args = ap.parse_args(argv)

    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    # Die with the parent: if the orchestrator is SIGKILLed, the pipe closes and we stop at the next event.
    spec = json.loads(Path(args.experiment).read_text())
    for k, v in (spec.get("env") or {}).items():
        os.environ.setdefault(k, str(v))
    emit = _emit_to(sys.stdout)
    from ..protocol import ExperimentSession

    session = ExperimentSession(spec, Path(args.out), emit)
    try:
        return session.run()
    except KeyboardInterrupt:
        session._close()
        return 130
    except BrokenPipeError:
        session._close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
