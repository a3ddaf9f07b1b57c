"""Process trees: is a pid alive, every process below one, their CPU time, and the parent-death signal.

The host side uses these to find a study's leftover processes (locks, runners) and to make sure a
worker never outlives the orchestrator that started it."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (another user's process counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's live process
        return True
    except OSError:
        return False
    # a zombie (exited, not reaped) is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, also those in sessions of their own (psutil where
    installed, else Linux /proc; just ``pid`` when neither answers)."""
    try:
        import psutil  # type: ignore

        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except Exception:  # noqa: BLE001 - no psutil, or the process is gone: read /proc
        pass
    children: dict[int, list[int]] = {}
    try:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])   # the field after the state letter
            children.setdefault(ppid, []).append(int(p.name))
    except OSError:
        return {pid}
    out, todo = set(), [pid]
    while todo:
        q = todo.pop()
        if q not in out:
            out.add(q)
            todo.extend(children.get(q, []))
    return out


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Meant as ``subprocess.Popen(..., preexec_fn=set_parent_death_signal)``: it runs in the child between
    fork and exec. Elsewhere than Linux it does nothing (the broken pipe still stops the child)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux (no libc.so.6 or no prctl)
        pass


def cpu_times(pids) -> dict[int, tuple[str, float]]:
    """{pid: (name, user + system CPU seconds so far)} from Linux /proc (threads included); processes that are
    gone or unreadable are left out (empty off Linux)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, tuple[str, float]] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        try:   # fields after the name: state(0) ppid(1) ... utime(11) stime(12)
            out[int(pid)] = (head.partition("(")[2], (int(fields[11]) + int(fields[12])) / tick)
        except (IndexError, ValueError):
            continue
    return out


def cpu_usage(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], duration_s: float,
              top: int = 3, roles: dict[int, str] | None = None) -> dict | None:
    """The CPU a process tree used over a window (pure): total CPU seconds, mean cores busy, and the busiest
    processes with their share of one core (1.0: a process busy for the whole window, e.g. a single-threaded
    server loop that the run waits on). Processes present at both readings count; a process that started inside
    the window counts from zero. ``roles`` names what a pid is (the worker and its load generator, the engine's
    server, the sampler): a process's name alone is often just "python". ``by_name`` sums the processes of each
    name (a list, busiest first: name, how many, their shares together): a server with several front-end
    processes (vLLM's ``api_server_count`` titles them ``VLLM::APIServer_N``) shows as one name with its count."""
    if duration_s <= 0 or not after:
        return None
    used = []
    for pid, (name, t1) in after.items():
        t0 = before.get(pid, (name, 0.0))[1]
        used.append((max(0.0, t1 - t0), pid, name))
    used.sort(reverse=True)
    total = sum(u for u, _, _ in used)
    by_name: dict[str, dict[str, Any]] = {}
    for u, _, name in used:
        entry = by_name.setdefault(name, {"name": name, "processes": 0, "cpu_share": 0.0})
        entry["processes"] += 1
        entry["cpu_share"] += u / duration_s
    return {"cpu_s": total, "cores_mean": total / duration_s, "processes": len(used),
            "busiest": [{"pid": pid, "name": name, "cpu_share": u / duration_s,
                         **({"role": roles[pid]} if roles and pid in roles else {})} for u, pid, name in used[:top]],
            "by_name": sorted(by_name.values(), key=lambda e: -e["cpu_share"])}
