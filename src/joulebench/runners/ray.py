"""Ray runner: each experiment is one Ray task on the node Ray picks.

On that node the task runs the experiment exactly as the local dispatcher would
(a :class:`ProcessRunner` worker, or a :class:`DockerRunner` container with
``runner_options.ray_node_runner: docker``) into a node-local temporary study
folder. As each trial finishes, its record and timeline are streamed back to the
driver (a Ray streaming generator), which writes them into the study directory
with the same atomic writes as every other runner. So a node lost mid-experiment
loses only the trial in flight; that trial becomes a failed record with
``error_kind: worker-lost`` and ``joulebench resume`` runs it again.

Resources: an experiment asks for ``num_gpus`` = the GPUs its ``device`` needs
(``cuda:0,1`` -> 2; inside the task CUDA ordinals index the GPUs Ray assigned),
``num_cpus`` = 1 on CPU, plus ``runner_options.resources`` (custom resources such
as ``{"H100": 1}`` to pin a card type; ``CPU``/``GPU`` keys there override the
counts). Ray never gives one GPU to two tasks, so measurements never share a device.

Ray is optional (``pip install 'joulebench[ray]'``) and imported lazily.
"""
from __future__ import annotations

import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from joulebench.config.runner import DockerOptions
from joulebench.config.device import DeviceSpec
from joulebench.errors import JoulebenchError
from joulebench.results.requests import requests_trace_path
from joulebench.results.store import StudyStore, atomic_write_bytes
from joulebench.runners.base import EventCallback, Experiment, ExperimentOutcome, Runner
from joulebench.runners.ray_task import TaskState
from joulebench.spec import (ErrorKind, Event, EventItem, ExperimentSpec, NodeItem, OutcomeItem, RayItem,
                             TrialEndEvent, TrialItem)

# Ray exceptions that mean "the node or the task's worker process went away", not "the
# experiment failed": the trial in flight is retried on resume.
LOST_ERROR_NAMES = ("RayActorError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                    "OwnerDiedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
                    "ObjectReconstructionFailedMaxAttemptsExceededError",
                    "ObjectReconstructionFailedLineageEvictedError", "ReferenceCountingAssertionError",
                    "LocalRayletDiedError", "RaySystemError", "OutOfMemoryError", "NodeDiedError")
TMP_PREFIX = "joulebench-ray-"
POLL_S = 0.2
FEASIBLE_RECHECK_S = 2.0
# The node's worker enforces the experiment timeout; the driver allows this much more
# (start-up, shipping results) before it gives up on a task that stopped talking.
DRIVER_TIMEOUT_GRACE_S = 120.0


def import_ray():
    try:
        import ray  # noqa: PLC0415 - optional extra
    except ImportError as e:
        raise JoulebenchError("runner: ray needs Ray, which is not installed here. Install it with "
                              "`pip install 'joulebench[ray]'` (or `pip install ray`), or use runner: process") from e
    return ray


def lost_error_types(ray) -> tuple[type, ...]:
    out = []
    for name in LOST_ERROR_NAMES:
        t = getattr(ray.exceptions, name, None)
        if isinstance(t, type):
            out.append(t)
    return tuple(out)


# ---------------------------------------------------------------------- pure helpers
def gpus_needed(device: str | None, *, cluster_has_gpus: bool) -> int:
    """How many GPUs an experiment with this ``device`` parameter asks Ray for."""
    return DeviceSpec.parse(device).count(gpus_present=cluster_has_gpus)


def task_options(params: dict[str, Any], resources: dict[str, float] | None, *,
                 cluster_has_gpus: bool) -> dict[str, Any]:
    """Ray ``.options(...)`` of one experiment: num_gpus from its device, num_cpus, custom resources."""
    res = dict(resources or {})
    num_gpus = gpus_needed(params.get("device"), cluster_has_gpus=cluster_has_gpus)
    num_cpus: float = 1
    if "GPU" in res:
        num_gpus = res.pop("GPU")
    if "CPU" in res:
        num_cpus = res.pop("CPU")
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0}
    if res:
        opts["resources"] = res
    return opts


def feasible_nodes(nodes: list[dict[str, Any]], opts: dict[str, Any]) -> list[str]:
    """Alive nodes (``ray.nodes()`` entries) whose total resources can ever hold this task."""
    need = dict(opts.get("resources") or {})
    need["CPU"] = opts.get("num_cpus") or 0
    need["GPU"] = opts.get("num_gpus") or 0
    out = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        have = n.get("Resources") or {}
        if all(have.get(k, 0.0) >= v for k, v in need.items() if v):
            out.append(n.get("NodeID"))
    return out


def _sweep_stale_tmp(root: Path) -> None:
    """Remove node-local folders of tasks whose process is gone (a force-cancelled or lost task)."""
    for d in root.glob(TMP_PREFIX + "*"):
        try:
            pid = int(d.name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


# ---------------------------------------------------------------------- node side
def node_identity() -> dict[str, Any]:
    ray = import_ray()
    ctx = ray.get_runtime_context()
    node = {"hostname": socket.gethostname(), "ray_node_id": ctx.get_node_id(),
            "ip": ray.util.get_node_ip_address(), "runner": "ray"}
    try:
        node["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001
        node["gpu_ids"] = []
    return node


def run_on_node(study_name: str, spec: ExperimentSpec, label: str, node_runner: str, image: str | None,
                python: str | None, timeout_s: float | None,
                docker: DockerOptions | None = None) -> Iterator[RayItem]:
    """Body of the Ray task (a streaming generator): run one experiment here, yield results as they come.

    Yields a :class:`NodeItem` first, then an :class:`EventItem` per event, a :class:`TrialItem`
    (record + timeline bytes) for each finished trial, and one final :class:`OutcomeItem`.
    """
    experiment_id = spec.experiment_id
    node = node_identity()
    yield NodeItem(node=node)
    root = Path(os.environ.get("JOULEBENCH_RAY_TMP") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=root))
    spec = spec.model_copy(update={"node": node})
    exp = Experiment(experiment_id=experiment_id, study_name=study_name, study_dir=tmp, spec=spec,
                     trial_ids=spec.trial_ids, label=label, gpus=list(node.get("gpu_ids") or []),
                     python=python, image=image)
    store = StudyStore(tmp)
    store.create()
    runner = _node_runner(node_runner, image, python, tmp, study_name, docker)
    items: queue.Queue = queue.Queue()
    th = threading.Thread(target=_run_and_ship, args=(runner, exp, store, items, node["hostname"], timeout_s),
                          name=f"joulebench-{experiment_id}", daemon=True)
    th.start()
    try:
        while True:
            item = items.get()
            yield item
            if isinstance(item, OutcomeItem):
                break
    finally:
        # A cancelled task: stop the worker (SIGTERM to its group via the runner's own clean-up)
        try:
            runner.close()
        except Exception:  # noqa: BLE001
            pass
        th.join(timeout=1.0)
        shutil.rmtree(tmp, ignore_errors=True)


def _node_runner(node_runner: str, image: str | None, python: str | None, tmp: Path, study_name: str,
                 docker: DockerOptions | None = None) -> Any:
    """The runner that runs the experiment on this node: a local worker process, or a container with the
    study's ``runner_options.docker`` (GPU passthrough, mounts, user, interpreter), as on a single host."""
    if node_runner == "docker":
        from joulebench.runners.registry import docker_runner

        runner: Any = docker_runner(docker or DockerOptions(), image=image)
        runner.prepare(tmp, study_name)
        return runner
    from joulebench.runners.process import ProcessRunner

    return ProcessRunner(python=python)


def _run_and_ship(runner: Any, exp: Experiment, store: StudyStore, items: queue.Queue, hostname: str,
                  timeout_s: float | None) -> None:
    """Thread body on the node: run the experiment, queueing its events, trials and final outcome."""
    def on_event(ev: Event) -> None:
        if isinstance(ev, TrialEndEvent):
            tid = ev.trial_id
            ts_path = store.timeseries_dir / f"{tid}.parquet"
            rq_path = store.root / requests_trace_path(tid)
            items.put(TrialItem(event=ev, record=store.records_by_id().get(tid),
                                timeseries=ts_path.read_bytes() if ts_path.exists() else None,
                                requests_trace=rq_path.read_bytes() if rq_path.exists() else None,
                                logs={p.name: p.read_bytes() for p in store.logs_dir.glob(f"{tid}.*")}))
        else:
            items.put(EventItem(event=ev))

    try:
        out = runner.run_experiment(exp, on_event=on_event, timeout_s=timeout_s)
        log = Path(exp.study_dir) / "logs" / f"{exp.experiment_id}.log"
        items.put(OutcomeItem(exit_code=out.exit_code, in_flight=out.in_flight, error=out.error,
                              error_kind=out.error_kind, log_tail=out.log_tail,
                              log=log.read_bytes() if log.exists() else b""))
    except BaseException as e:  # noqa: BLE001 - reported to the driver, never lost
        items.put(OutcomeItem(error=f"ray node {hostname}: {type(e).__name__}: {e}",
                              error_kind=ErrorKind.INFRASTRUCTURE))


# ---------------------------------------------------------------------- driver side
class RayRunner(Runner):
    """Run experiments as Ray tasks on an existing cluster (``address``) or a local one."""

    name = "ray"
    # The orchestrator may run this many experiments (load groups of a round) at once;
    # Ray queues what does not fit and never co-locates two on one GPU set.
    max_concurrent = 64

    def __init__(self, address: str | None = None, resources: dict[str, float] | None = None, *,
                 node_runner: str = "process", image: str | None = None, python: str | None = None,
                 init_kwargs: dict[str, Any] | None = None, docker: DockerOptions | None = None):
        if node_runner not in ("process", "docker"):
            raise JoulebenchError(f"runner_options.ray_node_runner must be 'process' or 'docker', not "
                                  f"'{node_runner}'")
        self.address = address
        self.resources = dict(resources or {})
        self.node_runner = node_runner
        self.image = image
        self.python = python
        self.docker = docker
        self.init_kwargs = dict(init_kwargs or {})
        self._ray = None
        self._started_ray = False
        self._remote = None
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}   # experiment id -> ObjectRefGenerator

    # -- cluster
    def _ensure(self):
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                                  "configure_logging": False}
            if self.address:
                kw["address"] = self.address
            kw.update(self.init_kwargs)
            try:
                ray.init(**kw)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise JoulebenchError(f"cannot connect to {where}: {e}. Start one with `ray start --head` "
                                      "(docs/ray.md) or fix runner_options.address") from e
            self._started_ray = True
        self._ray = ray
        self._remote = ray.remote(run_on_node)
        return ray

    def prepare(self, study_dir: Path, study_name: str) -> None:
        self._ensure()

    def close(self) -> None:
        self.cancel_all()
        if self._started_ray and self._ray is not None:
            try:
                self._ray.shutdown()
            except Exception:  # noqa: BLE001
                pass
        self._ray = None
        self._started_ray = False

    def cancel_all(self) -> None:
        """Force-cancel every running task (Ctrl-C); their loops then return 'interrupted'."""
        ray = self._ray
        with self._lock:
            gens = list(self._running.values())
        for g in gens:
            try:
                ray.cancel(g, force=True)
            except Exception:  # noqa: BLE001
                pass

    def _cluster_has_gpus(self) -> bool:
        try:
            return self._ray.cluster_resources().get("GPU", 0) > 0
        except Exception:  # noqa: BLE001
            return False

    # -- one experiment
    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        ray = self._ensure()
        eid = experiment.experiment_id
        study_dir = Path(experiment.study_dir)
        store = StudyStore(study_dir)
        atomic_write_bytes(study_dir / "experiments" / f"{eid}.json", experiment.spec.to_json().encode())
        opts = task_options(experiment.spec.first_params, self.resources, cluster_has_gpus=self._cluster_has_gpus())
        need = {"num_cpus": opts["num_cpus"], "num_gpus": opts["num_gpus"], **(opts.get("resources") or {})}
        infeasible = (f"no alive node of the Ray cluster has the resources this experiment needs ({need}); "
                      "add such a node or change runner_options.resources / device, then resume")
        if not feasible_nodes(ray.nodes(), opts):
            return ExperimentOutcome(eid, None, error=infeasible, error_kind=ErrorKind.INFRASTRUCTURE)
        gen = self._remote.options(**opts).remote(experiment.study_name, experiment.spec, experiment.label,
                                                  self.node_runner, experiment.image or self.image,
                                                  experiment.python or self.python, timeout_s, self.docker)
        with self._lock:
            self._running[eid] = gen
        task = TaskState(eid, store, on_event)
        lost = lost_error_types(ray)
        try:
            return self._follow(ray, gen, task, opts, infeasible, timeout_s)
        except KeyboardInterrupt:
            ray.cancel(gen, force=True)
            raise
        except ray.exceptions.TaskCancelledError:
            return task.outcome(error="ray task cancelled (interrupted)", error_kind=ErrorKind.INTERRUPTED)
        except lost as e:
            where = task.node.get("hostname") or "?"
            return task.outcome(error=f"Ray node {where} ({task.node.get('ray_node_id', '?')[:12]}) or its worker "
                                f"was lost: {type(e).__name__}; resume runs the trial again",
                                error_kind=ErrorKind.WORKER_LOST, log_tail=str(e)[-4000:])
        except ray.exceptions.RayError as e:
            return task.outcome(error=f"ray task failed: {type(e).__name__}",
                                error_kind=ErrorKind.INFRASTRUCTURE, log_tail=str(e)[-4000:])
        finally:
            with self._lock:
                self._running.pop(eid, None)

    def _follow(self, ray, gen, task: TaskState, opts: dict[str, Any], infeasible: str,
                timeout_s: float | None) -> ExperimentOutcome:
        """Take the task's items until its outcome; give up when no node can run it any more, or when
        a started task stops answering well past its timeout."""
        started = last_check = time.monotonic()
        while True:
            if not task.node and time.monotonic() - last_check > FEASIBLE_RECHECK_S:
                # Still queued: if the only nodes that could run it died meanwhile, it would wait forever.
                last_check = time.monotonic()
                if not feasible_nodes(ray.nodes(), opts):
                    ray.cancel(gen, force=True)
                    return task.outcome(error=infeasible, error_kind=ErrorKind.INFRASTRUCTURE)
            if timeout_s and task.node and time.monotonic() - started > timeout_s + DRIVER_TIMEOUT_GRACE_S:
                ray.cancel(gen, force=True)
                return task.outcome(error=f"ray task on {task.node.get('hostname')} stopped answering after "
                                    f"{timeout_s:.0f} s", error_kind=ErrorKind.TIMEOUT)
            ready, _ = ray.wait([gen], timeout=POLL_S)
            if not ready:
                continue
            try:
                item: RayItem = ray.get(next(gen))
            except StopIteration:
                return task.outcome(error="ray task ended without an outcome", error_kind=ErrorKind.WORKER_LOST)
            if isinstance(item, NodeItem):
                task.node = item.node
                started = time.monotonic()
                continue
            outcome = task.take(item)
            if outcome is not None:
                return outcome
