"""The part of a backend that only serves: an engine whose server joulebench starts and drives.

SGLang and TensorRT-LLM run through this (vLLM and llama.cpp also run offline and keep their own
``load``). A subclass names its recipe and says which of its parameters reach the server
(``server_options``); the server, its readiness, the load generator, the steady-state window and the
forced-length check are the engine-agnostic served mode (``ServedSession``).

The prompts go to the server as token ids from the model's own tokenizer (loaded here with
transformers), so every engine sees the same ids and joulebench counts input tokens itself.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from joulebench.backends.base import Backend, LoadInfo, Request, RequestResult
from joulebench.backends.served.params import ModeParams, runtime_value
from joulebench.errors import BackendError

RUNTIME_KEYS = ("concurrency", "request_rate", "max_output_tokens", "force_output_tokens", "temperature",
                "top_p", "top_k", "seed")

_FLAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_engine_args(engine_args: dict[str, Any], typed: set[str], engine: str,
                      owned: dict[str, str | None] | None = None) -> None:
    """``engine_args`` passthrough: flag-like names only, none that a typed parameter already sets, and
    none of the flags joulebench sets itself (``owned``: flag -> the parameter that sets it, or None)."""
    owned = owned or {}
    for key, value in engine_args.items():
        if not _FLAG_NAME.match(str(key)):
            raise ValueError(f"engine_args key '{key}' is not a flag name (letters, digits, '_' or '-')")
        norm = str(key).replace("-", "_")
        if norm in owned:
            param = owned[norm]
            raise ValueError(f"engine_args.{key}: " + (f"set it as '{param}' (a {engine} parameter of its own)"
                                                      if param else "joulebench sets this flag itself"))
        if norm in typed:
            raise ValueError(f"engine_args.{key} is a {engine} parameter of its own: set '{norm}' directly "
                             "(it is validated and decides whether the server restarts)")
        if isinstance(value, (dict, list)) and not value:
            raise ValueError(f"engine_args.{key} is empty")


def flag_values(engine_args: dict[str, Any], prefix: str = "--", sep: str = "-") -> list[str]:
    """``engine_args`` as argv: ``True`` -> the bare flag, ``False``/``None`` -> nothing, else flag + value."""
    import json

    out: list[str] = []
    for key, value in engine_args.items():
        flag = prefix + str(key).replace("_", sep).replace("-", sep)
        if isinstance(value, bool):
            if value:
                out.append(flag)
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            out += [flag, str(value)]
    return out


def engine_version(*dists: str) -> str | None:
    """An engine's installed version from package metadata (the engine is not imported)."""
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


class ServedEngineBackend(Backend):
    """A backend that runs only as a server (``mode: served``)."""

    recipe_name: ClassVar[str]
    distributions: ClassVar[tuple[str, ...]] = ()
    runtime_keys: ClassVar[frozenset[str]] = frozenset(RUNTIME_KEYS)

    def __init__(self, params: ModeParams, options: dict[str, Any] | None = None):
        super().__init__(params, options)
        self.session = None
        self.log_dir: Path | None = None
        self.model_path: str | None = None
        self._hf_tokenizer = None
        self._private = Path(tempfile.mkdtemp(prefix=f"joulebench-{self.recipe_name}-"))

    # ------------------------------------------------------------- what a subclass says
    def server_options(self) -> dict[str, Any]:
        """Options for the recipe's ``build_command`` (validated load-time parameters)."""
        raise NotImplementedError

    def server_env(self) -> dict[str, str]:
        return {}

    def dummy_weights(self) -> bool:
        """True when the engine makes random weights itself (the model folder needs no weights)."""
        return False

    def tensor_parallel(self) -> int:
        return int(getattr(self.params, "tensor_parallel_size", 1) or 1) * \
            int(getattr(self.params, "pipeline_parallel_size", 1) or 1)

    # ------------------------------------------------------------- load
    def model_path_of(self, model) -> tuple[str, bool]:
        """(path or hub id the server loads, whether the weights are synthetic)."""
        kind = getattr(model, "kind", None)
        if kind == "synthetic":
            from joulebench.models import materialize

            dtype = getattr(self.params, "dtype", None)
            dtype = dtype if dtype not in (None, "auto") else "bfloat16"
            return str(materialize(model, dtype, weights=not self.dummy_weights())), True
        if kind == "gguf":
            raise BackendError(f"backend {self.name} has no GGUF loader here: give a safetensors model directory "
                               "or hub id (or use backend: llamacpp for .gguf files)")
        if kind == "local":
            return str(Path(model.path).expanduser().resolve()), self.dummy_weights()
        return str(getattr(model, "spec", model)), self.dummy_weights()

    def load(self, model) -> LoadInfo:
        from joulebench.backends.served import ServedSession, get_recipe
        from joulebench.models.tokenizer import hf_tokenizer

        t0 = time.perf_counter()
        path, synthetic = self.model_path_of(model)
        self.model_path = path
        env = dict(self.server_env())
        if getattr(model, "kind", None) in ("synthetic", "local"):
            env.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise BackendError(f"transformers is not importable in {sys.executable}: {exc}") from exc
        tok_source = getattr(self.params, "tokenizer", None) or path
        self._hf_tokenizer = AutoTokenizer.from_pretrained(
            tok_source, trust_remote_code=bool(getattr(self.params, "trust_remote_code", False)))
        self.tokenizer = hf_tokenizer(self._hf_tokenizer, path)
        log_dir = self.log_dir or self._private / "logs"
        self.session = ServedSession(get_recipe(self.recipe_name), python=sys.executable, model=path,
                                     options=self.server_options(), env=env, log_dir=log_dir,
                                     ready_timeout_s=self.params.server_ready_timeout_s)
        ready_s = self.session.start()
        notes = {"mode": "served", "server_pid": self.session.server.pid, "port": self.session.port,
                 "server_ready_s": ready_s, "command": self.session.command(),
                 f"{self.recipe_name}_version": engine_version(*self.distributions),
                 "dummy_weights": self.dummy_weights(),
                 "pass_isolation": self.session.recipe.pass_isolation or "none (the engine offers none)"}
        return LoadInfo(load_s=time.perf_counter() - t0, synthetic_weights=synthetic, notes=notes,
                        model_config=_read_config(path))

    # ------------------------------------------------------------- generate
    def runtime(self, runtime: dict[str, Any]) -> dict[str, Any]:
        """The trial's parameters with the runtime ones resolved (trial first, then the engine's defaults);
        every other key is passed on as it came, so workload keys the served mode learns reach it."""
        rt = dict(runtime)
        rt.update({k: runtime_value(runtime, self.params, k) for k in RUNTIME_KEYS})
        rt["max_output_tokens"] = int(rt["max_output_tokens"] or 16)
        return rt

    def generate(self, requests: list[Request], runtime: dict[str, Any]) -> list[RequestResult]:
        if self.session is None:
            raise BackendError(f"{self.name}: generate() before load()")
        self.session.on_window_start, self.session.on_window_end = self.steady_state_hooks or (None, None)
        results = self.session.generate(requests, self.runtime(runtime))
        self.steady_state = self.session.last_steady_state
        self.steady_batch = self.session.last_batch
        by_index = {r.index: r for r in requests}
        for res in results:
            if not res.input_tokens:
                req = by_index[res.index]
                res.input_tokens = (len(req.prompt_token_ids) if req.prompt_token_ids is not None
                                    else self.tokenize_count(req.prompt))
        return results

    def tokenize_count(self, text: str) -> int:
        if self._hf_tokenizer is None:
            raise BackendError(f"{self.name}: no tokenizer before load()")
        return len(self._hf_tokenizer.encode(text))

    def cuda_device_indices(self) -> list[int]:
        return list(range(self.tensor_parallel()))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        shutil.rmtree(self._private, ignore_errors=True)


def _read_config(path: str) -> dict[str, Any]:
    import json

    p = Path(path) / "config.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
