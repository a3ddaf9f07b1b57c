"""The container runner: each experiment in a short-lived container of its engine's image.

The worker is the same as the process runner's (``python -m joulebench.worker.main
EXPERIMENT.json --out OUTDIR``). For each experiment the dispatcher

1. stages the experiment JSON and an output folder in the study directory and mounts them, with the
   model files, the Hugging Face cache and token (mounts.py);
2. starts the container unprivileged, with exactly the experiment's GPUs (request.py), through the
   engine's API with bounded retries (client.py);
3. reads the worker's events from the container's log stream, enforces the timeout, and stops the
   container on Ctrl-C (live.py);
4. merges the records and timelines into the study directory with atomic writes, keeps the log under
   ``<study>/logs/`` on failure, and always removes the container and the staging folder.

With ``experiment.worker_key`` set, the container stays after its experiment and serves the next one
of the same load group (the reuse policy is :class:`ReusingRunner`'s).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from joulebench.results.store import atomic_write_bytes
from joulebench.runners.base import EventCallback, Experiment, ExperimentOutcome, ReusingRunner
from joulebench.spec import ErrorKind
from joulebench.runners.docker import mounts
from joulebench.runners.docker.client import Containers, api_message, call, connect
from joulebench.runners.docker.gpu import CDI, ENV_ENGINE, ENV_IMAGE, ENV_IMAGE_ID, ENV_RUNNER, Passthrough
from joulebench.runners.docker.live import LiveContainer, Progress, failure, oom_hint, serve_args
from joulebench.runners.docker.request import ContainerSettings, backend_of, container_kwargs, container_spec

log = logging.getLogger(__name__)


class DockerRunner(ReusingRunner):
    name = "docker"

    def __init__(self, client=None, images: dict[str, str] | None = None, gpus: list[str] | None = None,
                 timeout_s: float | None = None, *, image: str | None = None, settings: ContainerSettings | None = None,
                 build_missing: bool = True, command: list[str] | None = None,
                 mount_hf_cache: bool = True, pass_hf_token: bool = True, poll_s: float = 0.1,
                 progress: Callable[[str, str], None] | None = None, python: str = "python",
                 gpu_passthrough: str = "auto", driver_dir: str | None = None, dev_dir: str = "/dev",
                 cdi_spec_dirs: list[str] | None = None):
        """``images``: engine -> image reference (default: each engine's current content-hash image,
        built when missing if ``build_missing``). ``gpus``: override every experiment's GPU list.
        ``timeout_s``: default per-experiment timeout. ``command``: replaces the worker command
        (diagnostics, tests). ``image``: one image for every experiment (a study's
        ``runner_options.image``). ``python``: the image's interpreter. ``gpu_passthrough``: auto,
        device-request, device-nodes or cdi (gpu.py; auto picks per engine, learnt at the first container;
        cdi is Podman's only, checked at ``prepare``). ``cdi_spec_dirs``: where cdi reads the CDI specs."""
        self.image = image
        self.images = dict(images or {})
        self.gpus = gpus
        self.timeout_s = timeout_s
        self.settings = settings or ContainerSettings()
        self.build_missing = build_missing
        self.command = command
        self.mount_hf_cache = mount_hf_cache
        self.pass_hf_token = pass_hf_token
        self.poll_s = poll_s
        self.progress = progress
        self.containers = Containers(lambda: client if client is not None else connect(),
                                     self.settings.stop_timeout_s)
        self._worker: LiveContainer | None = None   # the container kept to serve its load group's next experiment
        self.idle_timeout_s = 1800.0        # a serving container idle this long ends itself
        self.heartbeat_timeout_s = 60.0     # ... and sooner when this dispatcher stops beating (crash, kill -9)
        self._image_errors: dict[str, Exception] = {}
        self.python = python
        self.gpu_passthrough = gpu_passthrough
        self.driver_dir = driver_dir
        self.dev_dir = dev_dir
        self.cdi_spec_dirs = cdi_spec_dirs
        self._passthrough: Passthrough | None = None
        self._image_ids: dict[str, str | None] = {}
        self.start_costs: list[dict[str, Any]] = []   # per container: create+start until its first event

    @property
    def passthrough(self) -> Passthrough:
        """How GPUs go in: learnt from the engine that answers, once."""
        if self._passthrough is None:
            self._passthrough = Passthrough.for_client(self.client, self.gpu_passthrough, driver_dir=self.driver_dir,
                                                       dev_dir=self.dev_dir, cdi_spec_dirs=self.cdi_spec_dirs)
            log.info("container engine %s; GPU passthrough %s", self._passthrough.engine, self._passthrough.method)
        return self._passthrough

    def image_id(self, image: str) -> str | None:
        if image not in self._image_ids:
            try:
                self._image_ids[image] = self.client.images.get(image).id
            except Exception:   # noqa: BLE001 - only a fact for the records
                self._image_ids[image] = None
        return self._image_ids[image]

    def record_facts(self, image: str) -> dict[str, str]:
        """What the worker copies into each record's environment: runner, engine, image."""
        pt = self.passthrough
        facts = {ENV_RUNNER: "docker", ENV_ENGINE: str(pt.engine) if pt.engine else "unknown", ENV_IMAGE: image}
        iid = self.image_id(image)
        if iid:
            facts[ENV_IMAGE_ID] = iid
        return facts

    @property
    def client(self):
        return self.containers.client

    def live_pids(self) -> set[int]:
        """Host PIDs of the container kept between rounds: its worker's GPU memory is ours, not another user's
        (the busy-GPU gate and pre-flight ask). The engine reports the container's first process as a host PID;
        every process below it is ours too. Empty where the dispatcher cannot see host PIDs (it runs in a
        container of its own, in another PID namespace): then the gate sees the memory as another user's and
        waits (docs/containers.md)."""
        from joulebench.system.proc import descendants

        w = self._worker
        if w is None or w.container is None or not w.alive():
            return set()
        try:
            w.container.reload()
            pid = int((w.container.attrs.get("State") or {}).get("Pid") or 0)
        except Exception:  # noqa: BLE001 - a container that cannot be asked holds nothing we can name
            return set()
        if pid <= 0 or not Path(f"/proc/{pid}").exists():
            return set()
        return descendants(pid)

    def gpus_for(self, experiment: Experiment) -> list[str]:
        """The GPUs its container gets: the runner's override, else the experiment's own."""
        return [str(g) for g in (self.gpus if self.gpus is not None else experiment.gpus)]

    def image_for(self, experiment: Experiment) -> str:
        if experiment.image or self.image:
            return experiment.image or self.image
        engine = backend_of(experiment.spec)
        if engine in self.images:
            return self.images[engine]
        env_ref = os.environ.get(f"JOULEBENCH_IMAGE_{engine.upper()}")
        if env_ref:   # e.g. compose's joulebench-transformers:latest
            self.images[engine] = env_ref
            return env_ref
        if engine in self._image_errors:   # a failed build is not retried for every experiment
            raise self._image_errors[engine]
        from joulebench.runners.docker import images as images_mod

        try:
            info = images_mod.image_status([engine], client=self.client)[0]
            if not info.current:
                if not self.build_missing:
                    return images_mod.image_for(engine, client=self.client)   # raises with the hint
                log.warning("building the %s image %s (missing or stale)", engine, info.ref)
                info = images_mod.build_images([engine], client=self.client, progress=self.progress)[0]
        except images_mod.ImageError as exc:
            self._image_errors[engine] = exc
            raise
        self.images[engine] = info.ref
        return info.ref

    # -- lifecycle
    def prepare(self, study_dir: Path, study_name: str) -> None:
        if self.gpu_passthrough == CDI:
            self.passthrough   # cdi on an engine that is not Podman: refused before any experiment
        self.sweep(study_name)
        staging = Path(study_dir) / ".staging"
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)

    def sweep(self, study_name: str) -> list[str]:
        """Remove this study's containers whose dispatcher is gone (or is this process); returns names."""
        return self.containers.sweep(study_name)

    def close(self) -> None:
        try:
            self._retire()
        except Exception as exc:   # never mask the study's own outcome
            log.error("could not retire the serving container: %s", exc)
        self.containers.close()

    def container_kwargs(self, experiment: Experiment, *, image: str, staging: Path,
                         token_file: Path | None = None) -> dict[str, Any]:
        """Everything sent to ``containers.create`` for one experiment."""
        return container_kwargs(experiment, image=image, staging=staging, gpus=self.gpus_for(experiment),
                                settings=self.settings, command=self.command, mount_hf_cache=self.mount_hf_cache,
                                token_file=token_file, passthrough=self.passthrough, python=self.python,
                                extra_env=self.record_facts(image))

    def merge(self, experiment: Experiment, staging: Path) -> list[str]:
        """Copy the worker's records and timelines into the study directory (atomic); return trial ids."""
        return mounts.merge(experiment.study_dir, staging, experiment.experiment_id, experiment.trial_ids)

    # -- the experiment (the reuse policy is ReusingRunner's; these are its container steps)
    def run_experiment(self, experiment: Experiment, *, on_event: EventCallback,
                       timeout_s: float | None) -> ExperimentOutcome:
        """One experiment in a container. With ``experiment.worker_key`` set, the container stays after it
        (model loaded, worker idle on its inbox in the mounted staging folder) and serves the next
        experiment with the same key; any other key retires it first (never two models at once)."""
        timeout_s = timeout_s if timeout_s is not None else self.timeout_s
        return super().run_experiment(experiment, on_event=on_event, timeout_s=timeout_s)

    def worker_key(self, experiment: Experiment) -> str | None:
        return experiment.worker_key if not self.command else None   # a diagnostic command serves nothing

    def _create(self, experiment: Experiment, live: LiveContainer, *, serve: bool):
        image = self.image_for(experiment)
        kwargs = self.container_kwargs(experiment, image=image, staging=live.staging)
        if self.pass_hf_token:
            token_file, live.secret_dir = mounts.token_file(kwargs["user"])
            if token_file is not None:
                kwargs = self.container_kwargs(experiment, image=image, staging=live.staging, token_file=token_file)
        if serve:
            live.heartbeat_path = mounts.make_inbox(live.staging)
            kwargs["command"] = list(kwargs["command"]) + serve_args(self.idle_timeout_s, self.heartbeat_timeout_s)
        live.container = self.containers.create(kwargs)
        call(live.container.start)

    def _launch(self, experiment: Experiment, *, serve: bool) -> tuple[LiveContainer | None, ExperimentOutcome | None]:
        import docker

        from joulebench.errors import JoulebenchError

        outcome = ExperimentOutcome(experiment_id=experiment.experiment_id, exit_code=None)
        staging = mounts.stage(experiment.study_dir, experiment.experiment_id,
                               container_spec(experiment.spec, self.gpus_for(experiment)))
        live = LiveContainer(key=experiment.worker_key if serve else None, staging=staging)
        live.created_at = time.monotonic()
        live.first_for = experiment
        try:
            self._create(experiment, live, serve=serve)
        except (docker.errors.DockerException, JoulebenchError) as exc:
            self._discard(live)
            outcome.error = (f"container engine refused the experiment: {api_message(exc)}"
                             if isinstance(exc, docker.errors.DockerException) else str(exc))
            outcome.error_kind = ErrorKind.INFRASTRUCTURE
            return None, outcome
        except BaseException:
            self._discard(live)
            raise
        live.follow(experiment.experiment_id, self.heartbeat_timeout_s / 6)
        return live, None

    def _send(self, live: LiveContainer, experiment: Experiment) -> None:
        """Hand the idle container its next experiment: a spec file in its inbox (readable by its user)."""
        live.seq += 1
        spec = container_spec(experiment.spec, self.gpus_for(experiment))
        mounts.post_to_inbox(live.staging, f"{live.seq:06d}-{mounts.slug(experiment.experiment_id, 60)}.json",
                             (spec.to_json() + "\n").encode())

    def _watch(self, live: LiveContainer, progress: Progress, experiment: Experiment, on_event: EventCallback,
               timeout_s: float | None, until_end: bool) -> str | None:
        """Pass events on until the experiment ends, the container exits or the timeout passes ("timeout")."""
        deadline = time.monotonic() + timeout_s if timeout_s else None
        while live.waiter.is_alive():
            self._drain(live, progress, experiment, on_event)
            if until_end and progress.end is not None:
                return None
            if deadline is not None and time.monotonic() > deadline:
                log.warning("experiment %s ran past its %.0f s timeout; stopping its container",
                            experiment.experiment_id, timeout_s)
                self.containers.stop(live.container)
                return "timeout"
            live.waiter.join(self.poll_s)
        return None

    def _follow(self, live: LiveContainer, experiment: Experiment, on_event: EventCallback, timeout_s: float | None,
                *, until_end: bool) -> ExperimentOutcome:
        """Pass events on and merge records until the experiment ends (``until_end``: its
        experiment_end event; else the container's exit), the container dies or the timeout passes."""
        outcome = ExperimentOutcome(experiment_id=experiment.experiment_id, exit_code=None)
        progress = Progress(experiment.experiment_id)
        interrupted = False
        try:
            if self._watch(live, progress, experiment, on_event, timeout_s, until_end) == "timeout":
                outcome.error, outcome.error_kind = f"timed out after {timeout_s:g} s", ErrorKind.TIMEOUT
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: stopping container %s", live.container.name)
            self.containers.stop(live.container)
        if interrupted or outcome.error or not progress.ended_cleanly:
            live.waiter.join(self.settings.stop_timeout_s + 5)   # the container is ending: let it
            live.reader.join(5)
        self._drain(live, progress, experiment, on_event)
        ended = not live.waiter.is_alive()
        if ended and "error" in live.waited and outcome.error is None and not interrupted:
            outcome.error = f"lost the container: {live.waited['error']}"
            outcome.error_kind = ErrorKind.INFRASTRUCTURE
        outcome.exit_code = live.waited.get("code") if ended else None
        outcome.finished = self.merge(experiment, live.staging)
        if progress.in_flight and progress.in_flight not in outcome.finished:
            outcome.in_flight = progress.in_flight
        outcome.log_tail = mounts.redact("".join(live.tail)[-8000:])
        outcome.started = progress.started
        if interrupted:
            outcome.error, outcome.error_kind = "interrupted", ErrorKind.INTERRUPTED
        elif outcome.error is None:
            failed = failure(progress, exit_code=outcome.exit_code, ended=ended, until_end=until_end)
            if failed is not None:
                outcome.error, outcome.error_kind = failed[0] + oom_hint(live.container, outcome.exit_code), failed[1]
        if outcome.error:
            self._keep_log(experiment, outcome)
        outcome.reusable = until_end and not ended and outcome.error is None and progress.ended_cleanly
        if interrupted:
            raise KeyboardInterrupt
        return outcome

    def _drain(self, live: LiveContainer, progress: Progress, experiment: Experiment,
               on_event: EventCallback) -> None:
        while not live.events.empty():
            ev = live.events.get_nowait()
            if live.first_for is not None:
                self._started(live, experiment)
            trial_id = progress.take(ev)
            if trial_id is not None:
                # The record is on the mounted volume already: merge it now, so the orchestrator (and a
                # crash of this dispatcher) sees it before the experiment ends.
                try:
                    mounts.merge_trial(experiment.study_dir, live.staging, experiment.trial_ids, trial_id)
                except OSError as exc:
                    log.warning("could not merge the record of %s yet: %s", trial_id, exc)
            try:
                on_event(ev)
            except Exception as exc:   # a display callback must not kill the experiment
                log.error("event callback failed: %s", exc)

    def _started(self, live: LiveContainer, experiment: Experiment) -> None:
        """The container's first event: its start cost (create + start until the worker speaks), kept in
        ``<study>/containers.jsonl`` for the report."""
        import json

        cost = {"experiment_id": live.first_for.experiment_id, "container": getattr(live.container, "name", None),
                "start_to_ready_s": round(time.monotonic() - live.created_at, 4),
                "engine": str(self.passthrough.engine), "passthrough": self.passthrough.method,
                "gpus": self.gpus_for(experiment), "at": time.time()}
        live.first_for = None
        self.start_costs.append(cost)
        try:
            with open(Path(experiment.study_dir) / "containers.jsonl", "a") as fh:
                fh.write(json.dumps(cost) + "\n")
        except OSError as exc:
            log.warning("could not record the container start cost: %s", exc)

    def _stop_idle(self, live: LiveContainer) -> None:
        """Stop the idle serving container (a ``stop`` file: it closes its engine), then remove it."""
        if live.alive():
            try:
                mounts.post_to_inbox(live.staging, "stop", b"stop\n")
                live.waiter.join(self.settings.stop_timeout_s)
            except OSError:
                pass
        self._discard(live)

    def _discard(self, live: LiveContainer) -> None:
        live.beat_stop.set()
        if live.container is not None:
            self.containers.remove(live.container)
        if live.secret_dir is not None:
            shutil.rmtree(live.secret_dir, ignore_errors=True)
        shutil.rmtree(live.staging, ignore_errors=True)

    def _keep_log(self, experiment: Experiment, outcome: ExperimentOutcome) -> None:
        path = Path(experiment.study_dir) / "logs" / f"{mounts.slug(experiment.experiment_id, 80)}.container.log"
        header = (f"# experiment {experiment.experiment_id}: {outcome.error} "
                  f"(exit code {outcome.exit_code}, "
                  f"kind {outcome.error_kind.value if outcome.error_kind else None})\n")
        atomic_write_bytes(path, (header + outcome.log_tail).encode())
