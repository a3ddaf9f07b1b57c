"""llama.cpp backend through llama-cpp-python: GGUF models on CPU (or GPU with n_gpu_layers).

Offline: ``Llama.generate`` token by token in this process; each token gets the
``perf_counter`` time at which llama.cpp handed it over, so counts and timestamps are
exact. llama.cpp runs one sequence at a time here (``batch_size`` must be 1; ``n_batch``
is the prompt-processing chunk). Forced output length masks every end-of-generation token
of the vocabulary (like vLLM's ``min_tokens``), so each request yields exactly
``max_output_tokens``.

Served: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) is
started by joulebench and driven by the engine-agnostic load generator; forced length uses a
``logit_bias`` that pushes the end-of-generation tokens out of reach.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import model_validator

from joulebench.errors import BackendError
from joulebench.backends.served.params import ModeParams, runtime_value
from joulebench.backends.base import Backend, LoadInfo, Request, RequestResult


class LlamaCppParams(ModeParams):
    # load-time
    n_gpu_layers: int = 0
    n_ctx: int = 2048
    n_batch: int = 512
    n_ubatch: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    flash_attn: bool | None = None
    use_mmap: bool | None = None
    offload_kqv: bool | None = None
    # runtime (sampling)
    min_p: float | None = None
    repeat_penalty: float | None = None

    @model_validator(mode="after")
    def _single_sequence(self):
        if self.mode == "offline" and self.batch_size not in (None, 1):
            raise ValueError("llama.cpp (llama-cpp-python) decodes one sequence at a time: batch_size must be 1 "
                             "(n_batch sets the prompt-processing chunk; mode: served with concurrency queues requests)")
        if self.n_ctx < 16:
            raise ValueError("n_ctx must be at least 16")
        return self


_LOAD = ("n_gpu_layers", "n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "flash_attn", "use_mmap",
         "offload_kqv")


def gguf_path(model) -> str:
    kind = getattr(model, "kind", None)
    if kind != "gguf":
        raise BackendError(f"llama.cpp needs a .gguf model file, not a {kind or 'plain'} model "
                           f"('{getattr(model, 'spec', model)}'); convert it with llama.cpp's convert_hf_to_gguf.py "
                           "or use backend: transformers / vllm")
    p = Path(model.path).expanduser().resolve()
    if not p.is_file():
        raise BackendError(f"GGUF file {p} does not exist")
    return str(p)


def eog_token_ids(llm) -> list[int]:
    """Every end-of-generation token of the model's vocabulary (EOS, EOT, <|im_end|>, ...)."""
    import llama_cpp

    ids = set()
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        ids = {t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    except (AttributeError, TypeError):
        pass
    eos = llm.token_eos()
    if eos is not None and eos >= 0:
        ids.add(int(eos))
    return sorted(ids)


def _text_tokenizer(llm, name: str):
    """joulebench's tokenizer view of the GGUF vocabulary (builds synthetic prompts, counts tokens)."""
    from joulebench.models.tokenizer import TextTokenizer

    eos = llm.token_eos()
    return TextTokenizer(lambda t: llm.tokenize(t.encode("utf-8"), add_bos=False, special=False),
                         lambda ids: llm.detokenize(list(ids)).decode("utf-8", "replace"),
                         bos_id=llm.token_bos(), eos_id=eos, pad_id=eos, vocab_size=llm.n_vocab(), name=name)


class LlamaCppBackend(Backend):
    name: ClassVar[str] = "llamacpp"
    Params: ClassVar[type[LlamaCppParams]] = LlamaCppParams
    load_keys: ClassVar[frozenset[str]] = frozenset(_LOAD) | {"mode", "server_ready_timeout_s"}
    runtime_keys: ClassVar[frozenset[str]] = frozenset({"batch_size", "concurrency", "request_rate",
                                                        "max_output_tokens", "force_output_tokens", "temperature",
                                                        "top_p", "top_k", "seed", "min_p", "repeat_penalty"})

    def __init__(self, params: LlamaCppParams, options: dict[str, Any] | None = None):
        super().__init__(params, options)
        self.llm = None
        self.session = None
        self.log_dir: Path | None = None
        self._eog: list[int] = []

    def _llama_kwargs(self) -> dict[str, Any]:
        kw = {k: getattr(self.params, k) for k in _LOAD if getattr(self.params, k) is not None}
        if self.params.seed is not None:
            kw["seed"] = self.params.seed
        return kw

    def load(self, model) -> LoadInfo:
        t0 = time.perf_counter()
        path = gguf_path(model)
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError(f"llama_cpp is not importable in {sys.executable}: {exc}. "
                               "Run scripts/setup-llamacpp-env.sh and point the study's runner_options at it.") from exc
        kwargs = self._llama_kwargs()
        notes: dict[str, Any] = {"mode": self.params.mode, "llama_cpp_version": llama_cpp.__version__,
                                 "gguf": path}
        if self.params.mode == "served":
            from joulebench.backends.served import ServedSession, get_recipe

            # The vocabulary alone (no weights) gives the tokenizer and the end-of-generation ids.
            self.llm = Llama(model_path=path, vocab_only=True, verbose=False)
            self._eog = eog_token_ids(self.llm)
            log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="joulebench-llamacpp-"))
            self.session = ServedSession(get_recipe("llamacpp"), python=sys.executable, model=path,
                                         options=kwargs | {"_eog_token_ids": self._eog}, log_dir=log_dir,
                                         ready_timeout_s=self.params.server_ready_timeout_s)
            notes.update(server_ready_s=self.session.start(), server_pid=self.session.server.pid,
                         port=self.session.port, command=self.session.command())
        else:
            self.llm = Llama(model_path=path, verbose=False, **kwargs)
            self._eog = eog_token_ids(self.llm)
        self.tokenizer = _text_tokenizer(self.llm, path)
        meta = dict(getattr(self.llm, "metadata", {}) or {})
        notes["eog_token_ids"] = self._eog
        return LoadInfo(load_s=time.perf_counter() - t0, weights_bytes=os.path.getsize(path),
                        model_config={k: v for k, v in meta.items() if not k.startswith("tokenizer.")},
                        notes=notes)

    def _tokens(self, req: Request) -> list[int]:
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        return self.llm.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=True)

    def tokenize_count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def generate(self, requests: list[Request], runtime: dict[str, Any]) -> list[RequestResult]:
        keys = ("batch_size", "concurrency", "request_rate", "max_output_tokens", "force_output_tokens",
                "temperature", "top_p", "top_k", "seed", "min_p", "repeat_penalty")
        rt = {k: runtime_value(runtime, self.params, k) for k in keys}
        rt["max_output_tokens"] = int(rt["max_output_tokens"] or 16)
        if self.params.mode == "served":
            extra = {}
            for k in ("min_p", "repeat_penalty"):
                if rt.get(k) is not None:
                    extra[k] = rt[k]
            self.session.on_window_start, self.session.on_window_end = self.steady_state_hooks or (None, None)
            results = self.session.generate(requests, rt, extra_body=(lambda req: dict(extra)) if extra else None)
            self.steady_state = self.session.last_steady_state
            self.steady_batch = self.session.last_batch
            for res, req in zip(sorted(results, key=lambda r: r.index), sorted(requests, key=lambda r: r.index)):
                if not res.input_tokens:
                    res.input_tokens = len(self._tokens(req))
            return results
        if rt.get("batch_size") not in (None, 1):
            raise BackendError("llama.cpp runs one sequence at a time: batch_size must be 1")
        return [self._one(req, rt) for req in requests]

    def _one(self, req: Request, rt: dict[str, Any]) -> RequestResult:
        import numpy as np

        max_tokens = rt["max_output_tokens"]
        force = bool(rt.get("force_output_tokens"))
        tokens = self._tokens(req)
        if len(tokens) + max_tokens > self.params.n_ctx:
            raise BackendError(f"request {req.index}: {len(tokens)} prompt + {max_tokens} output tokens exceed "
                               f"n_ctx={self.params.n_ctx}; raise n_ctx")
        eog = np.array(self._eog, dtype=np.int64)
        processors = None
        if force and len(eog):
            from llama_cpp import LogitsProcessorList

            def mask_eog(input_ids, scores):
                scores[eog] = -np.inf
                return scores
            processors = LogitsProcessorList([mask_eog])
        if rt.get("seed") is not None:
            self.llm.set_seed(int(rt["seed"]) + req.index)
        temp = float(rt.get("temperature") or 0.0)
        kw = dict(temp=temp, top_k=int(rt["top_k"]) if rt.get("top_k") is not None else 40,
                  top_p=float(rt["top_p"]) if rt.get("top_p") is not None else 0.95,
                  min_p=float(rt["min_p"]) if rt.get("min_p") is not None else 0.05,
                  repeat_penalty=float(rt["repeat_penalty"]) if rt.get("repeat_penalty") is not None else 1.0,
                  logits_processor=processors)
        eog_set = set(self._eog)
        times: list[float] = []
        out_ids: list[int] = []
        finish = "length"
        submit = time.perf_counter()
        for tok in self.llm.generate(tokens, reset=True, **kw):
            times.append(time.perf_counter())
            out_ids.append(tok)
            if not force and tok in eog_set:
                finish = "stop"
                break
            if len(out_ids) >= max_tokens:
                break
        if force and len(out_ids) != max_tokens:
            raise BackendError(f"forced output length {max_tokens} not met by request {req.index}: {len(out_ids)}")
        text = self.llm.detokenize(out_ids).decode("utf-8", "replace")
        return RequestResult(index=req.index, input_tokens=len(tokens), output_tokens=len(out_ids), submit_s=submit,
                             token_times_s=times, finish_reason=finish, text=text)

    def cuda_device_indices(self) -> list[int]:
        if self.params.n_gpu_layers == 0:
            return []
        try:
            import llama_cpp

            if llama_cpp.llama_supports_gpu_offload():
                return [0]
        except (ImportError, AttributeError):
            pass
        return []

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.llm is not None:
            llm, self.llm = self.llm, None
            try:
                llm.close()
            except Exception:  # noqa: BLE001
                pass
