"""CPU used by a trial's process tree over its window (system/proc.py) and the host_cpu_busy flag: a real busy
child process, read from /proc."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from joulebench.meters.flags import Flag, host_cpu_flags
from joulebench.system.proc import cpu_times, cpu_usage, descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_busy_child_shows_as_one_busy_core():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)                                   # both started
        pids = descendants(__import__("os").getpid())
        assert {busy.pid, idle.pid} <= pids
        before = cpu_times(pids)
        t0 = time.perf_counter()
        time.sleep(1.5)
        after = cpu_times(pids)
        use = cpu_usage(before, after, time.perf_counter() - t0)
        top = use["busiest"][0]
        assert top["pid"] == busy.pid and top["name"].startswith("python")
        assert 0.6 < top["cpu_share"] <= 1.05             # one core, less whatever the host takes from it
        shares = {b["pid"]: b["cpu_share"] for b in use["busiest"]}
        assert shares.get(idle.pid, 0.0) < 0.05
        assert use["cpu_s"] >= top["cpu_share"] * 1.5 * 0.99 and use["processes"] == len(after)
        (flag,) = host_cpu_flags(use, busy_share=0.6)
        assert flag.code == Flag.HOST_CPU_BUSY and str(busy.pid) in flag.detail
    finally:
        busy.kill()
        idle.kill()


def test_cpu_usage_is_pure_arithmetic_and_counts_new_processes_from_zero():
    before = {1: ("server", 10.0), 2: ("loadgen", 5.0)}
    after = {1: ("server", 19.5), 2: ("loadgen", 6.0), 3: ("late", 0.5)}
    use = cpu_usage(before, after, 10.0)
    assert use["cpu_s"] == pytest.approx(11.0) and use["cores_mean"] == pytest.approx(1.1)
    assert [b["name"] for b in use["busiest"]] == ["server", "loadgen", "late"]
    assert use["busiest"][0]["cpu_share"] == pytest.approx(0.95)
    assert [f.code for f in host_cpu_flags(use)] == [Flag.HOST_CPU_BUSY]       # 95 % >= 90 %
    assert host_cpu_flags({"busiest": [{"pid": 1, "name": "x", "cpu_share": 0.5}]}) == []
    assert cpu_usage(before, after, 0.0) is None and host_cpu_flags(None) == []
    assert Flag.HOST_CPU_BUSY.advice.startswith("A process of this trial")


def test_roles_name_the_processes_that_are_all_called_python():
    before = {10: ("python", 1.0), 11: ("python", 1.0), 12: ("python", 1.0)}
    after = {10: ("python", 10.2), 11: ("python", 5.0), 12: ("python", 1.1)}
    use = cpu_usage(before, after, 10.0, roles={10: "joulebench worker (load generator)", 11: "engine server"})
    assert [b.get("role") for b in use["busiest"]] == ["joulebench worker (load generator)", "engine server", None]
    (flag,) = host_cpu_flags(use)
    assert flag.detail == "python (pid 10, joulebench worker (load generator)) 92% of a core"


def test_by_name_counts_the_processes_of_each_name():
    """Several API server processes of one server (vLLM titles them VLLM::APIServer_N; /proc's comm keeps 15
    characters) add up under one name with their count."""
    before = {1: ("python", 1.0), 2: ("VLLM::APIServe", 0.0), 3: ("VLLM::APIServe", 0.0), 4: ("VLLM::EngineCor", 2.0)}
    after = {1: ("python", 1.5), 2: ("VLLM::APIServe", 2.5), 3: ("VLLM::APIServe", 3.0), 4: ("VLLM::EngineCor", 8.0),
             5: ("VLLM::APIServe", 2.0)}
    use = cpu_usage(before, after, 10.0)
    # a list, busiest first (a record's shape does not depend on the process names)
    assert use["by_name"] == [{"name": "VLLM::APIServe", "processes": 3, "cpu_share": pytest.approx(0.75)},
                              {"name": "VLLM::EngineCor", "processes": 1, "cpu_share": pytest.approx(0.6)},
                              {"name": "python", "processes": 1, "cpu_share": pytest.approx(0.05)}]
    assert sum(e["processes"] for e in use["by_name"]) == use["processes"] == 5
    assert sum(e["cpu_share"] for e in use["by_name"]) == pytest.approx(use["cores_mean"])
