"""Ray runner: pure helpers and the missing-Ray error (no cluster; test_ray_cluster.py has one)."""
from __future__ import annotations

import subprocess
import sys

from joulebench.runners.ray import feasible_nodes, gpus_needed, task_options

# ---------------------------------------------------------------------- pure helpers (no Ray needed)


def test_gpus_needed_from_device():
    assert gpus_needed("cpu", cluster_has_gpus=True) == 0
    assert gpus_needed("cuda", cluster_has_gpus=False) == 1
    assert gpus_needed("cuda:0", cluster_has_gpus=False) == 1
    assert gpus_needed("cuda:0,1", cluster_has_gpus=False) == 2
    assert gpus_needed("cuda:0,1,2,3", cluster_has_gpus=True) == 4
    assert gpus_needed("auto", cluster_has_gpus=True) == 1
    assert gpus_needed("auto", cluster_has_gpus=False) == 0
    assert gpus_needed(None, cluster_has_gpus=False) == 0


def test_task_options_gpu_cpu_and_custom_resources():
    o = task_options({"device": "cuda:0,1"}, {"H100": 1}, cluster_has_gpus=True)
    assert o == {"num_cpus": 1, "num_gpus": 2, "max_retries": 0, "resources": {"H100": 1}}
    o = task_options({"device": "cpu"}, {}, cluster_has_gpus=True)
    assert o == {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}
    # CPU / GPU keys override the counts (a whole node for a CPU experiment) and are not custom resources
    o = task_options({"device": "cpu"}, {"CPU": 16, "cardA": 1}, cluster_has_gpus=False)
    assert o == {"num_cpus": 16, "num_gpus": 0, "max_retries": 0, "resources": {"cardA": 1}}


def test_feasible_nodes_checks_totals_of_alive_nodes():
    nodes = [
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 2, "cardA": 1}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2, "GPU": 8, "H100": 8}},
        {"NodeID": "c", "Alive": False, "Resources": {"CPU": 2, "cardC": 1}},
    ]
    assert feasible_nodes(nodes, {"num_cpus": 1, "num_gpus": 0, "resources": {"cardA": 1}}) == ["a"]
    assert feasible_nodes(nodes, {"num_cpus": 1, "num_gpus": 2, "resources": {"H100": 2}}) == ["b"]
    assert feasible_nodes(nodes, {"num_cpus": 1, "num_gpus": 0}) == ["a", "b"]
    assert feasible_nodes(nodes, {"num_cpus": 1, "num_gpus": 0, "resources": {"cardC": 1}}) == []  # dead
    assert feasible_nodes(nodes, {"num_cpus": 4, "num_gpus": 0}) == []


def test_missing_ray_gives_a_clear_error():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from joulebench.runners.ray import RayRunner\n"
            "from joulebench.errors import JoulebenchError\n"
            "try:\n    RayRunner().prepare(None, 's')\n"
            "except JoulebenchError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR runner: ray needs Ray" in out.stdout, out.stderr
    assert "joulebench[ray]" in out.stdout
