"""Parameters shared by engines that run offline (in-process) or served (OpenAI-compatible server); no engine imports."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from joulebench.backends.base import EngineParams

SERVED_ONLY = ("concurrency", "request_rate")


class ModeParams(EngineParams):
    """Parameters common to engines that run offline (in-process) or served (OpenAI-compatible server).

    ``max_output_tokens`` and ``force_output_tokens`` are workload parameters: they reach
    ``generate`` in its ``runtime`` dict, not through this model.
    """

    mode: Literal["offline", "served"] = "offline"
    # runtime
    batch_size: int | None = None
    concurrency: int | None = None
    request_rate: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0                 # sampling seed (request i uses seed + i) and Poisson arrivals
    # served mode: seconds to wait for the server to become ready
    server_ready_timeout_s: float | None = None

    @model_validator(mode="after")
    def _mode_rules(self):
        if self.mode == "offline":
            given = [k for k in SERVED_ONLY if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} applies only to mode: served "
                                 "(offline mode submits the whole workload; use batch_size to cap requests in flight)")
        else:
            if self.batch_size is not None:
                raise ValueError("batch_size does not apply to mode: served; use concurrency (closed loop) "
                                 "or request_rate (Poisson arrivals) instead")
        for key in ("batch_size", "concurrency"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"{key} must be at least 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("request_rate must be positive (requests per second)")
        return self


def runtime_value(runtime: dict[str, Any], params: EngineParams, key: str, default: Any = None) -> Any:
    """A runtime parameter: the trial's runtime dict first, then the backend's params, then the default."""
    if runtime.get(key) is not None:
        return runtime[key]
    value = getattr(params, key, None)
    return default if value is None else value
