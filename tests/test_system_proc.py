"""system/proc.py: live pids, and the parent-death signal that keeps a child from outliving its parent."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from joulebench.system.proc import descendants, pid_alive


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_pid_alive_sees_a_live_process_a_zombie_and_a_reaped_one():
    assert pid_alive(os.getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:                          # exited, not yet reaped: a zombie counts as dead
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.02)
    assert not pid_alive(p.pid)
    p.wait()
    assert not pid_alive(p.pid)


def test_descendants_of_a_process_without_children_is_itself():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert descendants(p.pid) == {p.pid}
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_with_the_parent_death_signal_dies_with_its_parent():
    """The middle process starts a sleeper with ``set_parent_death_signal`` and prints its pid; a kill -9
    of the middle one makes the kernel send SIGTERM to the sleeper. Without the signal it would sleep on."""
    middle = textwrap.dedent("""
        import subprocess, sys, time
        from joulebench.system.proc import set_parent_death_signal
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True, preexec_fn=set_parent_death_signal)
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        assert pid_alive(child)
        proc.kill()
        proc.wait()
        assert _wait_dead(child), "the child outlived its parent"
    finally:
        if pid_alive(child):
            os.kill(child, 9)
