"""Lazy registry of engines: a backend module is imported only when a study names it.

Each entry is ``"module:Class"``. Engine packages (torch, vllm, llama_cpp) are imported
inside the backend's methods, never at module import, so reading a backend's
``Params`` model to validate a study is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from joulebench.errors import StudyError, did_you_mean

_REGISTRY: dict[str, str] = {
    "transformers": "joulebench.backends.transformers:TransformersBackend",
    "vllm": "joulebench.backends.vllm:VLLMBackend",
    "llamacpp": "joulebench.backends.llamacpp:LlamaCppBackend",
    "sglang": "joulebench.backends.sglang:SGLangBackend",
    "trtllm": "joulebench.backends.trtllm:TRTLLMBackend",
}

# Engine packages each backend needs at run time (for `joulebench env`).
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {
    "transformers": ("torch", "transformers"),
    "vllm": ("vllm",),
    "llamacpp": ("llama_cpp",),
    "sglang": ("sglang",),
    "trtllm": ("tensorrt_llm",),
}


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Register a third-party backend as ``"package.module:Class"``."""
    _REGISTRY[name] = target


def get_backend_class(name: str):
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise StudyError(f"unknown backend '{name}'", path="backend",
                         hint=did_you_mean(name, _REGISTRY) or f"known backends: {', '.join(backend_names())}") from None
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def load_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a model load depends on (model, backend, device and the engine's load keys)."""
    backend_cls = get_backend_class(params["backend"])
    return {k: params[k] for k in ("model", "backend", "device") + tuple(sorted(backend_cls.load_keys))
            if k in params}
