"""The narrow interface every engine implements.

A backend loads a model once (load-time parameters) and then generates over
any number of workloads with runtime parameters (batch size, output length,
decoding, concurrency). It reports exact per-request token counts and token
timestamps; it never meters energy itself (the protocol does that).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Request:
    """One prompt of the workload."""

    index: int
    prompt: str
    # Token ids when the workload was tokenised already (synthetic lengths).
    prompt_token_ids: tuple[int, ...] | None = None
    # This request's own output length (workload.output_tokens or its class); None: max_output_tokens.
    max_output_tokens: int | None = None
    # The workload class it belongs to (workload.classes), for per-class figures.
    request_class: str | None = None


@dataclass
class RequestResult:
    """What one request produced, with `time.perf_counter()` timestamps."""

    index: int
    input_tokens: int
    output_tokens: int
    submit_s: float
    # Absolute perf_counter time at which each output token became available.
    # len(token_times_s) == output_tokens where the engine reports per-token times;
    # engines that only report first/last give two entries and set `token_times_exact=False`.
    token_times_s: list[float] = field(default_factory=list)
    token_times_exact: bool = True
    finish_reason: str | None = None
    text: str | None = None
    # Served mode: when the response ended (perf_counter); None: its last token counts as completion.
    completed_s: float | None = None
    request_class: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.submit_s if self.token_times_s else None

    @property
    def latency_s(self) -> float | None:
        return self.token_times_s[-1] - self.submit_s if self.token_times_s else None

    def itl_s(self) -> list[float]:
        if not self.token_times_exact:
            return []
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens < 2 or not self.token_times_s:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class LoadInfo:
    load_s: float
    weights_bytes: int | None = None
    parameters: int | None = None
    synthetic_weights: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class EngineParams(BaseModel):
    """Base of each engine's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Backend(abc.ABC):
    """One engine. Subclasses set `name`, `Params` and the load/runtime key sets."""

    name: ClassVar[str]
    Params: ClassVar[type[EngineParams]]
    # Parameter names that need a fresh worker (model reload) when they change.
    load_keys: ClassVar[frozenset[str]] = frozenset()
    # Parameter names that vary between trials inside one loaded worker.
    runtime_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: EngineParams, options: dict[str, Any] | None = None):
        self.params = params
        # Study-level settings the engine needs: device, trust_remote_code, seed, cache dirs.
        self.options: dict[str, Any] = dict(options or {})
        self.tokenizer = None  # a models.tokenizer.TextTokenizer once loaded, where the engine has one
        # Served engines: the steady state of the last generate() call (a served.loadgen.SteadyState with
        # start_s, end_s, output_tokens; perf_counter seconds); None means the whole pass counts.
        self.steady_state = None
        # Served engines: B of the last generate() call (the batch its steady window is defined by).
        self.steady_batch: int | None = None
        # Served engines: optional live callbacks (on_start(t), on_end(t), perf_counter seconds) fired when
        # the steady state opens (the B-th first token) and closes (the (N-B)-th completion); the protocol
        # reads the energy counters in them.
        self.steady_state_hooks = None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[str]:
        """Impossible combinations of this engine's parameters (pure; plan time)."""
        return []

    @classmethod
    def preload(cls) -> None:
        """Import the engine's libraries without touching any device (no CUDA context, no NVML):
        a worker started early does this while the host measures the device idle reference."""

    @abc.abstractmethod
    def load(self, model: "ModelSource") -> LoadInfo:  # noqa: F821
        """Load the model with the load-time parameters."""

    @abc.abstractmethod
    def generate(self, requests: list[Request], runtime: dict[str, Any]) -> list[RequestResult]:
        """Generate for every request (one pass over the workload)."""

    def tokenize_count(self, text: str) -> int:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until all queued device work has finished (energy window edges)."""

    def cuda_device_indices(self) -> list[int]:
        """CUDA ordinals (as this process sees them) that hold the model; [] on CPU."""
        return []

    def warmup_requests(self, requests: list[Request], runtime: dict[str, Any]) -> list[Request]:
        """The part of the workload one warm-up pass runs (engines with static batches need one batch)."""
        return requests

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        pass


def now() -> float:
    return time.perf_counter()
