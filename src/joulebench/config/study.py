"""Pydantic models of a study. Pure: no environment access, no network.

A study fixes a model, a backend and a workload, and sweeps *parameters*. Every
parameter lives in one flat namespace, so the same name works as a fixed value
(under ``engine:`` or ``workload:``) and as a sweep axis:

* common:   ``model``, ``backend``, ``device``
* workload: ``dataset``, ``dataset_path``, ``prompts``, ``input_tokens``,
            ``max_input_tokens``, ``max_output_tokens``, ``force_output_tokens``,
            ``output_tokens`` (a length distribution), ``classes`` (a request mix), ``slo``
* engine:   whatever the backend's ``Params`` model defines (``dtype``, ``batch_size``, ...)
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from joulebench.config.device import DEFAULT_DEVICE, validate_device
from joulebench.config.runner import DockerOptions, ProcessOptions, RayOptions, RunnerOptions  # noqa: F401


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


COMMON_KEYS = ("model", "backend", "device")
WORKLOAD_KEYS = ("dataset", "dataset_path", "prompts", "input_tokens", "max_input_tokens",
                 "max_output_tokens", "force_output_tokens", "output_tokens", "classes", "slo")
# Workload keys that appear in a configuration's parameters only when set.
OPTIONAL_WORKLOAD_KEYS = ("output_tokens", "classes", "slo")


class OutputLengths(Strict):
    """Per-request forced output lengths drawn from a stated, seeded distribution, clipped to
    [1, max_output_tokens] and rounded to whole tokens."""
    distribution: Literal["fixed", "uniform", "normal", "lognormal", "choice"]
    value: int | None = Field(None, ge=1, description="fixed: every request's length")
    low: int | None = Field(None, ge=1, description="uniform: smallest length (inclusive)")
    high: int | None = Field(None, ge=1, description="uniform: largest length (inclusive)")
    mean: float | None = Field(None, gt=0, description="normal: mean; lognormal: mean of the length (not its log)")
    std: float | None = Field(None, gt=0, description="normal / lognormal: standard deviation of the length")
    values: list[int] | None = Field(None, description="choice: the lengths to pick from")
    weights: list[float] | None = Field(None, description="choice: their relative weights (default equal)")

    @model_validator(mode="after")
    def _fields(self):
        need = {"fixed": ("value",), "uniform": ("low", "high"), "normal": ("mean", "std"),
                "lognormal": ("mean", "std"), "choice": ("values",)}[self.distribution]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"distribution '{self.distribution}' needs {', '.join(missing)}")
        allowed = set(need) | ({"weights"} if self.distribution == "choice" else set())
        extra = [k for k in ("value", "low", "high", "mean", "std", "values", "weights")
                 if getattr(self, k) is not None and k not in allowed]
        if extra:
            raise ValueError(f"distribution '{self.distribution}' takes {', '.join(sorted(allowed))}, "
                             f"not {', '.join(extra)}")
        if self.distribution == "uniform" and self.high < self.low:
            raise ValueError(f"high ({self.high}) is smaller than low ({self.low})")
        if self.distribution == "choice":
            if not self.values or any(v < 1 for v in self.values):
                raise ValueError("values must be a non-empty list of lengths >= 1")
            if self.weights is not None and (len(self.weights) != len(self.values)
                                             or any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
                raise ValueError("weights must be one non-negative number per value, not all zero")
        return self


class RequestClass(Strict):
    """One class of a request mix: its share of the requests and its shape."""
    name: str = Field(..., min_length=1)
    share: float = Field(..., gt=0, le=1, description="fraction of the requests (shares must sum to 1)")
    input_tokens: int = Field(..., ge=1, description="prompt length (synthetic), or the truncation of dataset prompts")
    output_tokens: int = Field(..., ge=1, description="forced output length of this class")


class SLOConfig(Strict):
    """A latency SLO: a request meets it when its TTFT and TPOT are within the bounds given."""
    ttft_s: float | None = Field(None, gt=0, description="time to first token bound (s)")
    tpot_s: float | None = Field(None, gt=0, description="time per output token bound (s)")

    @model_validator(mode="after")
    def _some(self):
        if self.ttft_s is None and self.tpot_s is None:
            raise ValueError("an SLO needs ttft_s, tpot_s or both (seconds), e.g. {ttft_s: 0.5, tpot_s: 0.05}")
        return self


class WorkloadConfig(Strict):
    dataset: str = Field("synthetic", description="synthetic | aienergyscore | path to a .jsonl file")
    dataset_path: str | None = Field(None, description="local copy of a named dataset")
    prompts: int = Field(8, ge=1, description="number of requests in one pass")
    input_tokens: int = Field(32, ge=1, description="prompt length of synthetic prompts")
    max_input_tokens: int | None = Field(None, ge=1, description="truncate longer prompts")
    max_output_tokens: int = Field(32, ge=1)
    force_output_tokens: bool = Field(True, description="every request yields exactly max_output_tokens")
    output_tokens: OutputLengths | None = Field(None, description="per-request forced output lengths (served "
                                                                  "mode or vLLM), from a seeded distribution")
    classes: list[RequestClass] | None = Field(None, description="a request mix: classes with shares and shapes")
    slo: SLOConfig | None = Field(None, description="served mode: the TTFT/TPOT SLO of goodput")

    @field_validator("output_tokens")
    @classmethod
    def _forced_lengths(cls, v, info):
        if v is not None and not info.data.get("force_output_tokens", True):
            raise ValueError("per-request output lengths are forced lengths: leave force_output_tokens true")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v, info):
        if v is None:
            return v
        if not v:
            raise ValueError("classes must list at least one class")
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique: {names}")
        total = sum(c.share for c in v)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"class shares sum to {total:g}, not 1")
        limit = info.data.get("max_output_tokens")
        too_long = [c for c in v if limit is not None and c.output_tokens > limit]
        if too_long:
            raise ValueError(f"class '{too_long[0].name}' asks for {too_long[0].output_tokens} output tokens, more "
                             f"than max_output_tokens ({limit}); set workload.max_output_tokens to at least "
                             f"{max(c.output_tokens for c in v)}")
        if info.data.get("output_tokens") is not None:
            raise ValueError("give output lengths either per class (classes[].output_tokens) or as "
                             "workload.output_tokens, not both")
        if not info.data.get("force_output_tokens", True):
            raise ValueError("class output lengths are forced lengths: leave force_output_tokens true")
        return v


class RepeatsConfig(Strict):
    min: int = Field(3, ge=1)
    max: int = Field(10, ge=1)
    ci_target: float | None = Field(0.02, gt=0, lt=1,
                                    description="stop when the 95 % CI half-width / mean is below this")
    metric: Literal["energy_per_output_token_j", "energy_above_loaded_idle_per_output_token_j",
                    "throughput_tok_s"] = Field(
        "energy_per_output_token_j",
        description="the figure whose CI ci_target bounds: gross J/output-token (default), the J/output-token "
                    "above the loaded-idle reference (the marginal energy, which repeats far tighter on host-bound "
                    "work), or tokens/s. Where no energy meter exists, tokens/s.")

    @model_validator(mode="after")
    def _order(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is smaller than min ({self.min})")
        return self

    @property
    def adaptive(self) -> bool:
        return self.ci_target is not None and self.max > self.min


class WarmupConfig(Strict):
    cv_target: float = Field(0.02, gt=0, description="stop when CV of the last k passes' tokens/s is below")
    k: int = Field(3, ge=2)
    min_passes: int = Field(2, ge=0)
    rewarm_passes: int = Field(1, ge=0, description="passes for a configuration this worker warmed to "
                                                    "stability in an earlier round (the switch back to its shapes); "
                                                    "0: none, the window's first pass is checked against the "
                                                    "configuration's earlier windows instead (flag rewarm_drift)")
    max_passes: int = Field(20, ge=0)
    plateau: bool = Field(True, description="also stop once the mean of the last k passes has stopped moving "
                                            "against the k before (pass-to-pass noise left; meters/warmup.py)")
    max_s: float = Field(300.0, gt=0)
    served_batches: float = Field(1.0, ge=0, description="served mode: a warm-up pass sends this many running "
                                  "batches of requests (the smaller of max_num_seqs and concurrency), picked evenly "
                                  "through the workload; 0: the whole workload")


class ThermalGateConfig(Strict):
    band_c: float = Field(3.0, gt=0)
    timeout_s: float = Field(120.0, ge=0)


class MeasurementConfig(Strict):
    min_window_s: float = Field(10.0, gt=0, le=86400, description="shortest measurement window (s)")
    warmup: WarmupConfig = WarmupConfig()
    thermal_gate: ThermalGateConfig | None = None
    device_idle_s: float = Field(10.0, ge=0, description="device idle reference length (0: skip)")
    loaded_idle_s: float = Field(5.0, ge=0, description="loaded idle reference length (0: skip)")
    baseline_max_age_s: float = Field(3600.0, gt=0)
    baseline_drift_rel: float = Field(0.05, gt=0)
    sampler_hz: float = Field(10.0, gt=0, le=100)
    sampler: bool = True
    allow_foreign_processes: bool = False
    counter_period_s: float = Field(0.1, gt=0)


class StudyConfig(Strict):
    name: str
    description: str | None = None
    model: str
    backend: str = "transformers"
    device: str = Field(DEFAULT_DEVICE, description="auto | cpu | cuda | cuda:0 | cuda:0,1 (config/device.py)")
    engine: dict[str, Any] = Field(default_factory=dict, description="fixed engine parameters")
    workload: WorkloadConfig = WorkloadConfig()
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    experiments: list[dict[str, Any]] = Field(default_factory=list)
    repeats: RepeatsConfig = RepeatsConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    runner: Literal["auto", "process", "docker", "ray"] = "auto"
    runner_options: RunnerOptions = RunnerOptions()
    seed: int = 0
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names the results folder)")
        return v

    @field_validator("repeats", mode="before")
    @classmethod
    def _fixed_repeats(cls, v):
        if isinstance(v, bool):
            raise ValueError("repeats must be a count or {min, max, ci_target}")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("repeats must be at least 1")
            return {"min": v, "max": v, "ci_target": None}
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return validate_device(v)

    @field_validator("sweep")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if len(vals) == 0:
                raise ValueError(f"axis '{k}' has no values")
            seen = []
            for x in vals:
                if x in seen:
                    raise ValueError(f"axis '{k}' lists {x!r} twice")
                seen.append(x)
        return v
