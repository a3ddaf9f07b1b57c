"""Ray runner on a real local Ray cluster: a head (cardA) and a worker node (cardB) on loopback.

The tests start the nodes themselves (``ray start --block``, each in its own process group,
private temp dir), kill the worker node for real mid-study, and make sure no Ray process of
theirs is left after the module. They skip when Ray is not installed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from joulebench.results.store import RETRYABLE_ERROR_KINDS, StudyStore

from .conftest import JOULEBENCH, REPO, tiny_study

ray = pytest.importorskip("ray")
RAY_BIN = str(Path(sys.executable).with_name("ray"))
NODE_COMMON = ["--num-cpus", "1", "--object-store-memory", "200000000", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", "--block"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str, also: str | None = None) -> list[int]:
    """Processes whose command line or environment mentions our private temp dir (and `also` in the command)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if (marker.encode() in cmd or marker.encode() in env) and (also is None or also.encode() in cmd):
            out.append(int(d.name))
    return out


class LocalCluster:
    """Head (cardA) + worker node (cardB) on loopback, each `ray start --block` in its own group."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="jbray")   # short: Ray's unix socket paths must stay < 108 bytes
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray 2.5x+ clusters use token authentication: one private token for the nodes and the drivers.
        self.ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                        "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = dict(os.environ, **self.ray_env, JOULEBENCH_RAY_TMP=os.path.join(self.tmp, "w"),
                        JOULEBENCH_TEST_RAY_MARKER=self.tmp)
        self.head = self.worker = None

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        return subprocess.Popen([RAY_BIN, "start", *args, *NODE_COMMON], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)

    def start_head(self):
        self.head = self._start(["--head", "--port", str(self.port), "--resources", json.dumps({"cardA": 1}),
                                 "--include-dashboard=false", "--temp-dir", self.tmp], "head")
        self._wait_nodes(1)

    def start_worker(self):
        self.worker = self._start(["--address", self.address, "--resources", json.dumps({"cardB": 1})], "worker")

    def alive_nodes(self) -> list[dict]:
        code = ("import ray, json; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
                "print(json.dumps([n for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                             timeout=120)
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return []

    def _wait_nodes(self, n: int, timeout_s: float = 90) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            nodes = self.alive_nodes()
            if len(nodes) >= n:
                return nodes
            time.sleep(1)
        raise RuntimeError(f"Ray cluster did not reach {n} node(s); logs in {self.tmp}")

    def node_id_with(self, resource: str) -> str:
        for n in self._wait_nodes(2 if resource == "cardB" else 1):
            if resource in (n.get("Resources") or {}):
                return n["NodeID"]
        raise RuntimeError(f"no node with {resource}")

    def kill_worker(self):
        """SIGKILL the worker node: its `ray start`, raylet and Ray workers (one process group)."""
        _killpg(self.worker)
        self.worker = None

    def stop(self):
        for p in (self.worker, self.head):
            _killpg(p, sig=signal.SIGTERM)
        time.sleep(1)
        for p in (self.worker, self.head):
            _killpg(p)
        # Anything of ours that left its group (Ray workers, joulebench workers): by pid.
        for _ in range(20):
            left = _pids_with(self.tmp)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        assert not _pids_with(self.tmp), "Ray processes left behind"
        shutil.rmtree(self.tmp, ignore_errors=True)


def _killpg(proc, sig=signal.SIGKILL):
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    if sig == signal.SIGKILL:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start_head()
        c.start_worker()
        c.node_id_with("cardB")
        yield c
    finally:
        c.stop()


def _records(study_dir: Path) -> dict[str, dict]:
    return StudyStore(study_dir).records_by_id()


def _plan_trials(study_dir: Path) -> list[str]:
    plan = json.loads((study_dir / "plan.json").read_text())
    return [t["trial_id"] for t in plan["trials"]] if "trials" in plan else \
        [f"{c['config_id']}-r0" for c in plan["configs"]]


def _write(tmp_path: Path, study: dict) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study, sort_keys=False))
    return p


@pytest.mark.slow
def test_sweep_spreads_over_both_nodes(cluster, tmp_path):
    """Two load groups, one CPU per node: Ray runs the two experiments at once, one on each node."""
    study = tiny_study("ray-spread", runner="ray", runner_options={"address": cluster.address},
                       sweep={"dtype": ["float32", "bfloat16"], "batch_size": [1, 2]})
    out = tmp_path / "out"
    res = subprocess.run([*JOULEBENCH, "run", str(_write(tmp_path, study)), "--out", str(out), "--quiet",
                          "--no-report"], capture_output=True, text=True, env=cluster.env, cwd=REPO, timeout=600)
    recs = _records(out)
    assert res.returncode == 0, res.stdout + res.stderr
    plan = json.loads((out / "plan.json").read_text())
    expected = {f"{c['config_id']}" for c in plan["configs"]}
    assert len(recs) == 4 and {r["config_id"] for r in recs.values()} == expected
    assert all(r["status"] == "ok" for r in recs.values())
    # every record ran on a node of this cluster, and the two nodes both ran experiments
    head, worker = cluster.node_id_with("cardA"), cluster.node_id_with("cardB")
    nodes = {r["node"]["ray_node_id"] for r in recs.values()}
    assert nodes == {head, worker}
    for r in recs.values():
        assert r["node"]["hostname"] == socket.gethostname() and r["node"]["ip"]
        assert r["environment"], "the node's environment is recorded"
        # each trial's timeline landed in the study directory next to its record
        assert (out / r["timeseries"]).exists() if r.get("timeseries") else True
    # one experiment (one worker, one load) per load group, each on one node
    by_exp: dict[str, set] = {}
    for r in recs.values():
        by_exp.setdefault(r["experiment_id"], set()).add(r["node"]["ray_node_id"])
    assert len(by_exp) == 2 and all(len(v) == 1 for v in by_exp.values())
    # the trial table carries the node, so the report can break results down by node
    from joulebench.results.table import load_results

    df = load_results(out)
    assert set(df["node.ray_node_id"]) == {head, worker}
    assert "node.hostname" in df.columns


@pytest.mark.slow
def test_ctrl_c_cancels_the_task_and_its_worker(cluster, tmp_path):
    """SIGINT mid-trial: exit 130, the trial in flight is 'interrupted', no worker process is left on the node."""
    study = tiny_study("ray-int", runner="ray", runner_options={"address": cluster.address},
                       sweep={"batch_size": [1, 2, 3, 4]},
                       measurement={**tiny_study()["measurement"], "min_window_s": 2.0})
    out = tmp_path / "out"
    proc = subprocess.Popen([*JOULEBENCH, "run", str(_write(tmp_path, study)), "--out", str(out), "--quiet",
                             "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cluster.env, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(_records(out)) < 1:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(1.0)   # into the next trial
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, log
    recs = _records(out)
    assert [r["error_kind"] for r in recs.values() if r["status"] == "failed"] == ["interrupted"], log
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"

    def workers_left():
        return _pids_with(cluster.tmp, also="joulebench.worker.main")

    deadline = time.monotonic() + 20
    while workers_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert workers_left() == [], "the experiment's worker outlived the cancelled Ray task"


@pytest.mark.slow
def test_pinned_to_a_card_type_and_node_lost_mid_study_then_resume(cluster, tmp_path):
    """Pinned to cardB (the worker node); SIGKILL that node mid-study; resume completes every trial once."""
    study = tiny_study("ray-lost", runner="ray",
                       runner_options={"address": cluster.address, "resources": {"cardB": 1}},
                       sweep={"batch_size": [1, 2, 3, 4, 5, 6]},
                       measurement={**tiny_study()["measurement"], "min_window_s": 1.0})
    path = _write(tmp_path, study)
    out = tmp_path / "out"
    worker_id = cluster.node_id_with("cardB")
    proc = subprocess.Popen([*JOULEBENCH, "run", str(path), "--out", str(out), "--quiet", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(_records(out)) < 2:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        before = _records(out)
        assert len(before) >= 2, "no trial finished in time"
        cluster.kill_worker()
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the study was not lost: it ended, trials that finished are kept, the one in flight failed as worker-lost
    assert proc.returncode == 1, log
    after = _records(out)
    for tid, rec in before.items():
        assert after[tid] == rec
        assert rec["status"] == "ok" and rec["node"]["ray_node_id"] == worker_id
    lost = [r for r in after.values() if r.get("error_kind") == "worker-lost"]
    assert len(lost) == 1, ([(r["trial_id"], r.get("error_kind"), r.get("error")) for r in after.values()], log)
    assert all(r["error_kind"] in RETRYABLE_ERROR_KINDS for r in after.values() if r["status"] == "failed")
    assert len(after) == 6, "every trial has a record: finished, lost, or not runnable without the node"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"

    # a worker node with the card comes back; resume runs exactly the trials that were not done
    cluster.start_worker()
    new_worker = cluster.node_id_with("cardB")
    assert new_worker != worker_id
    res = subprocess.run([*JOULEBENCH, "resume", str(out), "--quiet", "--no-report"], capture_output=True,
                         text=True, env=cluster.env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    final = _records(out)
    plan = json.loads((out / "plan.json").read_text())
    assert {r["config_id"] for r in final.values()} == {c["config_id"] for c in plan["configs"]}
    assert len(final) == 6 and all(r["status"] == "ok" for r in final.values())
    for tid, rec in final.items():
        if after[tid]["status"] == "ok":   # finished before the node died (on it): kept, never run again
            assert rec == after[tid], "a finished trial ran again"
            assert rec["node"]["ray_node_id"] == worker_id
        else:                              # lost or not run: run once by resume, on the new node
            assert rec["node"]["ray_node_id"] == new_worker
            assert rec["finished_at"] > after[tid]["finished_at"]
    # no node-local folder of ours is left on the worker nodes
    assert list(Path(cluster.env["JOULEBENCH_RAY_TMP"]).glob("joulebench-ray-*")) == []
