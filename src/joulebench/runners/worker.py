"""The worker: the side that runs inside a spawned process, a container or a Ray task.

    python -m joulebench.runners.worker EXPERIMENT.json --out OUTDIR

It reads the experiment spec, runs the protocol for each of its trials and writes
records under OUTDIR. Events go to stdout as JSON lines (see runners/base.py);
engine chatter goes wherever the engine prints it. SIGTERM and SIGINT end the worker
promptly (the trial in flight is not recorded: the orchestrator marks it).

    python -m joulebench.runners.worker EXPERIMENT.json --out OUTDIR --inbox DIR

With ``--inbox`` the worker stays after its first experiment, model loaded, and serves
the experiments that appear in DIR (``*.json`` specs of the same load group, written
atomically, taken in name order) until a file named ``stop`` appears, its parent dies,
or it has been idle for ``--idle-timeout-s``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
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
    ap.add_argument("--inbox", help="serve later experiments of the same load group from this folder")
    ap.add_argument("--idle-timeout-s", type=float, default=1800.0, help="with --inbox: exit after this long idle")
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
    parent = os.getppid()
    try:
        rc = session.run()
        if rc == 0 and args.inbox:
            serve(session, Path(args.inbox), parent=parent, idle_timeout_s=args.idle_timeout_s)
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    finally:
        session.close()


def serve(session, inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05) -> None:
    """Serve the experiments that arrive in ``inbox`` with the model already loaded."""
    idle_since = time.monotonic()
    while True:
        if (inbox / "stop").exists():
            return
        pending = sorted(p for p in inbox.glob("*.json") if not p.name.startswith("."))
        if pending:
            path = pending[0]
            spec = json.loads(path.read_text())
            path.unlink()
            session.continue_with(spec)
            idle_since = time.monotonic()
            continue
        if os.getppid() != parent or not inbox.is_dir():
            return          # the dispatcher is gone (or cleaned up): never outlive it
        if time.monotonic() - idle_since > idle_timeout_s:
            return
        time.sleep(poll_s)


if __name__ == "__main__":
    sys.exit(main())
