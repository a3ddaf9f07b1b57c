"""The worker: the side that runs inside a spawned process, a container or a Ray task.

    python -m joulebench.worker.main EXPERIMENT.json --out OUTDIR

It reads the experiment spec, runs the protocol for each of its trials and writes
records under OUTDIR. Events go to stdout as JSON lines (see runners/base.py);
engine chatter goes wherever the engine prints it. SIGTERM and SIGINT end the worker
promptly (the trial in flight is not recorded: the orchestrator marks it).

    python -m joulebench.worker.main EXPERIMENT.json --out OUTDIR --inbox DIR

With ``--inbox`` the worker stays after its first experiment, model loaded, and serves
the experiments that appear in DIR (``*.json`` specs of the same load group, written
atomically, taken in name order) until a file named ``stop`` appears, its parent dies,
or it has been idle for ``--idle-timeout-s``.

    python -m joulebench.worker.main --out OUTDIR --inbox DIR --preload BACKEND

starts a worker early: it imports the engine's libraries (no device touched) and takes
its first experiment from the inbox too, so the dispatcher can measure the device idle
reference meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from joulebench.runners.base import format_event
from joulebench.testing import install_from_environment


def _emit_to(stream):
    def emit(event):
        stream.write(format_event(event) + "\n")
        stream.flush()

    return emit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="joulebench-worker")
    ap.add_argument("experiment", nargs="?", help="experiment spec (JSON); without it, the first comes from --inbox")
    ap.add_argument("--out", required=True, help="output folder (trials/, timeseries/, logs/)")
    ap.add_argument("--inbox", help="serve later experiments of the same load group from this folder")
    ap.add_argument("--idle-timeout-s", type=float, default=1800.0, help="with --inbox: exit after this long idle")
    ap.add_argument("--preload", metavar="BACKEND", help="import this engine's libraries before the first experiment")
    ap.add_argument("--heartbeat", help="with --inbox: a file the dispatcher touches while it lives (containers, "
                                        "where the parent-death check cannot see the dispatcher)")
    ap.add_argument("--heartbeat-timeout-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.experiment is None and not args.inbox:
        ap.error("give an experiment spec, or --inbox to take it from there")

    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    install_from_environment()
    parent = os.getppid()
    emit = _emit_to(sys.stdout)
    beat = (Path(args.heartbeat), args.heartbeat_timeout_s) if args.heartbeat else None
    if args.experiment is None:
        try:
            if args.preload:
                from joulebench.backends import get_backend_class

                get_backend_class(args.preload).preload()
            emit({"event": "ready", "preloaded": args.preload})
            first = next_spec(Path(args.inbox), parent=parent, idle_timeout_s=args.idle_timeout_s, heartbeat=beat)
        except KeyboardInterrupt:
            return 130
        if first is None:
            return 0
        spec = first
    else:
        spec = json.loads(Path(args.experiment).read_text())
    for k, v in (spec.get("env") or {}).items():
        os.environ.setdefault(k, str(v))
    from joulebench.worker.session import ExperimentSession

    session = ExperimentSession(spec, Path(args.out), emit)
    try:
        rc = session.run()
        if rc == 0 and args.inbox:
            serve(session, Path(args.inbox), parent=parent, idle_timeout_s=args.idle_timeout_s, heartbeat=beat)
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    finally:
        session.close()


def next_spec(inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
              heartbeat: tuple[Path, float] | None = None) -> dict | None:
    """The next experiment spec from ``inbox``; None: stop (a ``stop`` file, the parent gone, the
    dispatcher's heartbeat file stale or gone, idle too long)."""
    idle_since = time.monotonic()
    while True:
        if (inbox / "stop").exists():
            return None
        pending = sorted(p for p in inbox.glob("*.json") if not p.name.startswith("."))
        if pending:
            path = pending[0]
            spec = json.loads(path.read_text())
            path.unlink()
            return spec
        if os.getppid() != parent or not inbox.is_dir():
            return None     # the dispatcher is gone (or cleaned up): never outlive it
        if heartbeat is not None:
            try:
                if time.time() - heartbeat[0].stat().st_mtime > heartbeat[1]:
                    return None
            except OSError:
                return None
        if time.monotonic() - idle_since > idle_timeout_s:
            return None
        time.sleep(poll_s)


def serve(session, inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
          heartbeat: tuple[Path, float] | None = None) -> None:
    """Serve the experiments that arrive in ``inbox`` with the model already loaded."""
    while (spec := next_spec(inbox, parent=parent, idle_timeout_s=idle_timeout_s, poll_s=poll_s,
                             heartbeat=heartbeat)) is not None:
        session.continue_with(spec)


if __name__ == "__main__":
    sys.exit(main())
