"""The trial record: one JSON file per finished or failed trial.

Units live in the names. Energy figures are null where no meter exists, with a
quality flag that says why. ``schema_version`` changes when a field changes
meaning.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from joulebench.spec import ErrorKind

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class LatencyStats(_Model):
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    n: int = 0


class DeviceTimelineStats(_Model):
    """A device over one window, from the sampler's timeline (meters/sampler.device_window_stats)."""

    samples: int = 0
    power_w_mean: float | None = None          # sampled power (the counter gives the energy)
    sm_clock_mhz_mean: float | None = None
    sm_clock_mhz_min: float | None = None
    gpu_util_pct_mean: float | None = None     # share of time a kernel ran (NVML), mean over the samples
    power_cap_share: float | None = None       # share of samples with the software power cap engaged
    clock_limited_share: float | None = None   # share with any power / thermal clock-limiting reason


class DeviceRecord(_Model):
    """Identity and energy of one measured device."""

    index: int | None = None          # NVML index on the host
    uuid: str | None = None
    name: str | None = None
    kind: str = "gpu"                 # gpu | cpu-package | dram
    energy_j: float | None = None
    energy_source: str | None = None
    device_idle_w: float | None = None
    loaded_idle_w: float | None = None
    mean_power_w: float | None = None
    start_temperature_c: float | None = None
    end_temperature_c: float | None = None
    timeline: DeviceTimelineStats | None = None   # what the sampler saw of it over the window


class QualityFlagRecord(_Model):
    code: str
    advice: str
    detail: str | None = None


class Baselines(_Model):
    device_idle_w: float | None = None
    loaded_idle_w: float | None = None
    device_idle_measured_at: float | None = None   # unix time
    device_idle_duration_s: float | None = None
    loaded_idle_duration_s: float | None = None
    loaded_idle_measured_at: float | None = None   # unix time (a long-lived worker re-measures when stale)


class WarmupRecord(_Model):
    passes: int = 0
    converged: bool = False
    converged_by: str | None = None   # cv | plateau | noise-floor | earlier (meters/warmup.py)
    duration_s: float = 0.0
    cv: float | None = None
    throughputs_tok_s: list[float] = Field(default_factory=list)
    rewarm: bool = False              # the worker had warmed this configuration before (an earlier round)
    noise_floor_cv: float | None = None   # the worker's steady-state pass CV this trial was held to
    skipped: bool = False             # a repeat with rewarm_passes 0: no re-warm pass, the window began at once
    first_pass_rel_diff: float | None = None   # then: its window's first pass against the earlier windows' passes
    first_pass_agrees: bool | None = None      # within the tolerance (else the trial is flagged rewarm_drift)


# ---------------------------------------------------------------- served mode: per-request energy, SLO
ATTRIBUTION_RULE = ("sampler intervals (counter deltas, else power x dt, scaled to the window's counter energy); "
                    "each interval split over requests by tokens processed in it (decode token = 1 unit at its "
                    "timestamp; prefill = prefill_weight x input tokens at the first token); token-less intervals "
                    "by time in flight; idle intervals in proportion to energy already attributed")


class _Block(_Model):
    pass


class Distribution(_Block):
    median: float
    p90: float
    p99: float
    mean: float
    n: int


class LengthFit(_Block):
    """Least squares J/request = intercept_j + per_input_token_j x input + per_output_token_j x output.
    A coefficient is None where its length does not vary across requests (not identifiable)."""
    intercept_j: float
    per_input_token_j: float | None = None
    per_output_token_j: float | None = None
    r2: float | None = None


class ClassEnergy(_Block):
    requests: int
    energy_j_mean: float
    energy_j_median: float
    input_tokens_mean: float
    output_tokens_mean: float


class PerRequestEnergy(_Block):
    """The record's ``per_request_energy`` block."""
    rule: str = ATTRIBUTION_RULE
    prefill_weight: float
    context_weight: float = 0.0          # 0: every decode token 1 unit; > 0: 1 + w x context x requests decoding
    window_energy_j: float
    requests: int
    intervals: int
    interval_source: str                 # counter | power | window (no timeline)
    timeline_scale: float | None = None  # window energy / sum of the timeline's interval energies
    energy_j: Distribution               # J per request
    fit: LengthFit | None = None
    conservation_rel_error: float
    by_class: dict[str, ClassEnergy] | None = None


class SLORecord(_Block):
    """Served mode: the study's SLO and how the window met it (analysis over the whole window)."""
    ttft_s: float | None = None          # the SLO's bounds
    tpot_s: float | None = None
    requests: int
    requests_met: int
    attainment: float                    # share of requests meeting every bound
    goodput_req_s: float | None = None   # SLO-meeting requests / whole-window duration
    goodput_req_per_j: float | None = None   # goodput per watt: (req/s) / mean W = requests met / window energy


class TrialRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    trial_id: str
    config_id: str
    study: str
    params: dict[str, Any]
    repeat: int
    round: int = 0
    experiment_id: str | None = None
    worker_id: str | None = None      # the worker (one model load) that ran it: the experiment that started it
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    error_kind: ErrorKind | None = None   # a plain string in the JSON: error | crash | timeout | ...
    started_at: float | None = None   # unix time
    finished_at: float | None = None

    # energy (J) and its source
    energy_j: float | None = None
    energy_source: str | None = None
    energy_above_device_idle_j: float | None = None
    energy_above_loaded_idle_j: float | None = None
    energy_per_output_token_j: float | None = None
    energy_above_device_idle_per_output_token_j: float | None = None
    energy_above_loaded_idle_per_output_token_j: float | None = None
    energy_per_request_j: float | None = None
    energy_per_token_j: float | None = None        # per input + output token
    mean_power_w: float | None = None
    cpu_energy_j: float | None = None
    cpu_energy_source: str | None = None

    # work done in the window
    output_tokens: int | None = None
    input_tokens: int | None = None
    requests: int | None = None
    passes: int | None = None          # workload passes inside the window
    duration_s: float | None = None    # the measured window
    throughput_tok_s: float | None = None
    input_throughput_tok_s: float | None = None
    requests_per_s: float | None = None
    ttft_s: LatencyStats | None = None
    itl_s: LatencyStats | None = None
    tpot_s: LatencyStats | None = None
    latency_s: LatencyStats | None = None
    flops: float | None = None
    flops_formula: str | None = None
    peak_memory_bytes: int | None = None
    nvml_memory_used_bytes: int | None = None
    weights_bytes: int | None = None
    load_s: float | None = None
    load_notes: dict[str, Any] = Field(default_factory=dict)   # the engine's load notes (secrets masked)
    load_energy_j: float | None = None

    devices: list[DeviceRecord] = Field(default_factory=list)
    baselines: Baselines = Field(default_factory=Baselines)
    warmup: WarmupRecord = Field(default_factory=WarmupRecord)
    thermal: dict[str, Any] = Field(default_factory=dict)
    preflight: dict[str, Any] = Field(default_factory=dict)
    flags: list[QualityFlagRecord] = Field(default_factory=list)
    model: dict[str, Any] = Field(default_factory=dict)   # source, synthetic_weights, parameters
    environment: dict[str, Any] = Field(default_factory=dict)
    node: dict[str, Any] = Field(default_factory=dict)    # hostname, ray node id
    timeseries: str | None = None     # relative path of the timeline parquet
    requests_trace: str | None = None  # served mode: relative path of the requests trace (results/requests.py)
    host_cpu: dict[str, Any] | None = None  # CPU used by the worker's process tree over the window
    # Served mode: the steady-state part of the window (primary figures come from it) and the whole window.
    steady_state: dict[str, Any] | None = None
    whole_window: dict[str, Any] | None = None
    # Served mode: the window's energy attributed to each request (analysis/attribution.py) and the SLO.
    per_request_energy: PerRequestEnergy | None = None
    slo: SLORecord | None = None
