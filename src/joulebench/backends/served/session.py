"""One served engine: a recipe, a running server process, and a load generator on it."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from joulebench.errors import BackendError
from joulebench.backends.base import Request, RequestResult
from joulebench.backends.served.loadgen import (LoadGenerator, LoadSpec, SteadyState, WindowHook, steady_state,
                                                target_batch)
from joulebench.backends.served.recipes import ServerRecipe
from joulebench.backends.served.server import ServerProcess, free_port

HOST = "127.0.0.1"


def _get_json(url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    import httpx

    r = httpx.get(url, timeout=timeout_s)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


class ServedSession:
    """Start with ``start()``, drive with ``generate()``, always ``close()``."""

    def __init__(self, recipe: ServerRecipe, *, python: str, model: str, options: dict[str, Any],
                 env: dict[str, str] | None = None, log_dir: Path | None = None,
                 ready_timeout_s: float | None = None):
        self.recipe = recipe
        self.python = python
        self.model = model
        self.options = dict(options)
        self.extra_env = dict(env or {})
        self.log_dir = Path(log_dir) if log_dir else None
        self.ready_timeout_s = ready_timeout_s or recipe.ready_timeout_s
        self.server: ServerProcess | None = None
        self.port: int | None = None
        self.model_name: str | None = None
        self.ready_s: float | None = None
        self.last_steady_state: SteadyState | None = None
        self.last_batch: int | None = None       # B of the last pass's steady window
        self.on_window_start: WindowHook | None = None
        self.on_window_end: WindowHook | None = None
        # a fresh prefix-cache scope for every pass (recipe.pass_isolation); off only to show what it prevents
        self.isolate_passes = True

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return self.recipe.build_command(self.python, self.model, HOST, self.port, self.options)

    def start(self) -> float:
        """Launch the server and wait until it answers; returns seconds to ready."""
        self.port = free_port(HOST)
        env = dict(os.environ)
        env.update(self.recipe.env(self.options))
        env.update(self.extra_env)
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{self.recipe.name}-server-{self.port}.log"
        self.server = ServerProcess(self.command(), env=env, log_path=log_path,
                                    stop_timeout_s=self.recipe.stop_timeout_s)
        self.ready_s = self.server.wait_ready(self._ready, timeout_s=self.ready_timeout_s,
                                              what=f"{self.recipe.name} server (pid {self.server.pid})")
        return self.ready_s

    def _ready(self) -> bool:
        status, _ = _get_json(self.base_url + self.recipe.health_path)
        if status != 200:
            return False
        status, body = _get_json(self.base_url + self.recipe.models_path)
        if status != 200 or not isinstance(body, dict) or not body.get("data"):
            return False
        ids = [m.get("id") for m in body["data"]]
        name = self.recipe.served_model_name
        self.model_name = name if name in ids else ids[0]
        return True

    def generate(self, requests: list[Request], runtime: dict[str, Any],
                 extra_body: Callable[[Request], dict[str, Any]] | None = None) -> list[RequestResult]:
        if self.server is None or not self.server.running():
            tail = self.server.log_tail() if self.server else ""
            raise BackendError(f"{self.recipe.name} server is not running\n{tail}")
        max_tokens = int(runtime.get("max_output_tokens") or 16)
        force = bool(runtime.get("force_output_tokens", False))
        isolation = self.isolate_pass()

        def want(req: Request) -> int:   # the request's own length (workload shapes), else the trial's
            return int(req.max_output_tokens or max_tokens)

        def body_for(req: Request) -> dict[str, Any]:
            body: dict[str, Any] = {
                "model": self.model_name,
                "prompt": (list(req.prompt_token_ids) if req.prompt_token_ids is not None
                           and self.recipe.accepts_token_ids else req.prompt),
                "max_tokens": want(req),
                "temperature": float(runtime.get("temperature", 0.0) or 0.0),
            }
            for key in ("top_p", "top_k", "seed"):
                if runtime.get(key) is not None:
                    body[key] = runtime[key]
            if self.recipe.stream_options:
                body["stream_options"] = dict(self.recipe.stream_options)
            if force:
                body.update(self.recipe.force_length_fields(want(req), self.options))
            body.update(isolation)
            if extra_body is not None:
                body.update(extra_body(req))
            return body

        batch = target_batch(len(requests), max_num_seqs=self.options.get("max_num_seqs"),
                             concurrency=runtime.get("concurrency"))
        spec = LoadSpec(concurrency=runtime.get("concurrency"), request_rate=runtime.get("request_rate"),
                        seed=int(runtime.get("seed") or 0), batch=batch)
        gen = LoadGenerator(self.base_url, completions_path=self.recipe.completions_path,
                            on_window_start=self.on_window_start, on_window_end=self.on_window_end)
        t0 = time.perf_counter()
        results = gen.run(requests, body_for, spec)
        self.last_wall_s = time.perf_counter() - t0
        self.last_batch = batch
        self.last_steady_state = steady_state(results, batch)
        if force:
            wants = {r.index: want(r) for r in requests}
            short = [r.index for r in results if r.output_tokens != wants[r.index]]
            if short:
                raise BackendError(f"{self.recipe.name}: forced output lengths not met by requests {short[:10]} "
                                   f"(wanted {[wants[i] for i in short[:10]]}, got "
                                   f"{[r.output_tokens for r in results if r.index in short[:10]]})")
        return results

    def isolate_pass(self) -> dict[str, Any]:
        """Keep the coming pass from reusing the prefix cache of earlier passes of the same prompts (the
        recipe's ``pass_isolation``): returns the request fields that do it (a fresh cache salt), or flushes
        the cache now. A failed flush raises: a pass that may reuse the warm-up's prefill is not measured."""
        how = self.recipe.pass_isolation if self.isolate_passes else None
        if how == "cache_salt":
            return {"cache_salt": f"joulebench-{uuid.uuid4().hex}"}
        if how == "flush" and self.recipe.flush_path:
            import httpx

            try:
                r = httpx.post(self.base_url + self.recipe.flush_path, timeout=30.0)
            except httpx.HTTPError as exc:
                raise BackendError(f"{self.recipe.name}: could not flush the prefix cache before a pass "
                                   f"({self.recipe.flush_path}: {exc})") from exc
            if r.status_code >= 300:
                raise BackendError(f"{self.recipe.name}: {self.recipe.flush_path} answered {r.status_code} "
                                   f"before a pass: {r.text[:200]}")
        return {}

    def close(self) -> int | None:
        if self.server is None:
            return None
        code = self.server.stop()
        return code
