"""The worker: the side that runs inside a spawned process, a container or a Ray task.

    python -m joulebench.worker.main EXPERIMENT.json --out OUTDIR

It reads the experiment spec, runs the protocol for each of its trials and writes
records under OUTDIR. Events go to stdout as JSON lines (spec.py's Event models);
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

The spec is validated once, as it is read (``ExperimentSpec.from_json``). One that does not
validate (a version mismatch, a bug) ends the worker with exit code 2 (``WorkerExit.BAD_SPEC``)
and one line on stderr naming the file and the first error.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from joulebench.testing import install_from_environment
from pydantic import ValidationError

from joulebench.spec import ExperimentSpec, ReadyEvent, WorkerExit, format_event


class BadSpec(Exception):
    """An experiment spec file that does not validate; the message names the file and the first error."""


def read_spec(name: str, text: str | bytes) -> ExperimentSpec:
    """Validate one experiment spec (the file's ``name`` is for the message)."""
    try:
        return ExperimentSpec.from_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "spec"
        n = e.error_count()
        more = f" (and {n - 1} more)" if n > 1 else ""
        msg = " ".join(str(first.get("msg")).split())       # one line, whatever the message
        raise BadSpec(f"bad experiment spec {name}: {where}: {msg}{more}") from None


def _emit_to(stream):
    def emit(event):
        stream.write(format_event(event) + "\n")
        stream.flush()

    return emit


def _args(argv: list[str] | None) -> argparse.Namespace:
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    install_from_environment()
    try:
        return _run(args)
    except BadSpec as e:
        print(f"joulebench-worker: {e}", file=sys.stderr, flush=True)
        return WorkerExit.BAD_SPEC


def _run(args: argparse.Namespace) -> int:
    parent = os.getppid()
    emit = _emit_to(sys.stdout)
    inbox = Path(args.inbox) if args.inbox else None
    beat = (Path(args.heartbeat), args.heartbeat_timeout_s) if args.heartbeat else None
    if args.experiment is None:
        try:
            if args.preload:
                from joulebench.backends import get_backend_class

                get_backend_class(args.preload).preload()
            emit(ReadyEvent(preloaded=args.preload))
            spec = take_spec(inbox, parent=parent, idle_timeout_s=args.idle_timeout_s, heartbeat=beat)
        except KeyboardInterrupt:
            return WorkerExit.INTERRUPTED
        if spec is None:
            return WorkerExit.OK
    else:
        path = Path(args.experiment)
        try:
            text = path.read_bytes()
        except OSError as e:
            raise BadSpec(f"bad experiment spec {path}: {e.strerror or e}") from None
        spec = read_spec(str(path), text)
    for k, v in spec.env.items():
        os.environ.setdefault(k, v)
    from joulebench.worker.session import ExperimentSession

    session = ExperimentSession(spec, Path(args.out), emit)
    try:
        rc = session.run()
        if rc == WorkerExit.OK and inbox is not None:
            serve(session, inbox, parent=parent, idle_timeout_s=args.idle_timeout_s, heartbeat=beat)
        return rc
    except KeyboardInterrupt:
        return WorkerExit.INTERRUPTED
    except BrokenPipeError:
        return WorkerExit.BROKEN_PIPE
    finally:
        session.close()


def _take(inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
          heartbeat: tuple[Path, float] | None = None) -> tuple[Path, bytes] | None:
    """The next spec file in ``inbox`` (taken: removed) and its content; None: stop (a ``stop`` file,
    the parent gone, the dispatcher's heartbeat file stale or gone, idle too long)."""
    idle_since = time.monotonic()
    while True:
        if (inbox / "stop").exists():
            return None
        pending = sorted(p for p in inbox.glob("*.json") if not p.name.startswith("."))
        if pending:
            path = pending[0]
            text = path.read_bytes()
            path.unlink()
            return path, text
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


def next_spec(inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
              heartbeat: tuple[Path, float] | None = None) -> dict[str, Any] | None:
    """The next spec file's JSON, unvalidated (see :func:`take_spec`); None: stop."""
    got = _take(inbox, parent=parent, idle_timeout_s=idle_timeout_s, poll_s=poll_s, heartbeat=heartbeat)
    return json.loads(got[1]) if got is not None else None


def take_spec(inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
              heartbeat: tuple[Path, float] | None = None) -> ExperimentSpec | None:
    """The next experiment spec from ``inbox``, validated (:class:`BadSpec` if it does not); None: stop."""
    got = _take(inbox, parent=parent, idle_timeout_s=idle_timeout_s, poll_s=poll_s, heartbeat=heartbeat)
    return read_spec(str(got[0]), got[1]) if got is not None else None


def serve(session, inbox: Path, *, parent: int, idle_timeout_s: float, poll_s: float = 0.05,
          heartbeat: tuple[Path, float] | None = None) -> None:
    """Serve the experiments that arrive in ``inbox`` with the model already loaded."""
    while (spec := take_spec(inbox, parent=parent, idle_timeout_s=idle_timeout_s, poll_s=poll_s,
                             heartbeat=heartbeat)) is not None:
        session.continue_with(spec)


if __name__ == "__main__":
    sys.exit(main())
