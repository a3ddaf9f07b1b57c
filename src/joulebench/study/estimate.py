"""How long a study will take, said honestly: what the study fixes (windows, references, loads), what
it does not (how long one pass of the workload takes), and what an earlier run of the same study
measured, which replaces the guess wherever it covers a configuration.

A window is whole passes (a pass is every prompt of the workload once), and warm-up is whole passes
too, so the pass length decides the time of a batch-1 study: one pass of 8 prompts x 256 tokens at
batch 1 is 2,048 sequential decode steps. Without a measurement the step time is a stated assumption
per engine and device (``STEP_S``), scaled by the model's size where its config is known.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# Assumed seconds per decode step at small batch (the engine's per-step overhead dominates there);
# measured figures replace them (see estimate_study's history).
STEP_S = {("transformers", "gpu"): 0.025, ("transformers", "cpu"): 0.01,
          ("vllm", "gpu"): 0.012, ("vllm", "cpu"): 0.2,   # vLLM on 2 CPU cores: ~0.3 s a step measured
          ("llamacpp", "gpu"): 0.008, ("llamacpp", "cpu"): 0.01,
          ("sglang", "gpu"): 0.012}                        # assumed like vLLM's (not measured here)
CPU_FLOPS = 4e9             # effective FLOP/s of a small-batch CPU decode step on 2 cores (a 135M model in
                            # transformers measured 167 ms a step at load average 2.5: busy hosts are slower)
WORKER_START_S = {"gpu": 25.0, "cpu": 8.0}   # interpreter, engine imports, model load (small model)
ENGINE_START_S = {"vllm": 40.0,                # more for engines that start a server or compile (vLLM CPU:
                  "sglang": 60.0}              # a 40 s load measured on 2 cores; SGLang on an H100: 99 s the
                                               # first start, 48-51 s later ones, offline engine)
TRIAL_OVERHEAD_S = 1.0      # pre-flight, thermal read, record
REPORT_S = 10.0


@dataclass
class StudyEstimate:
    low_s: float                         # what the study fixes, every pass taken as instantaneous
    likely_s: float                      # the first repeats.min rounds, pass lengths assumed or measured
    up_to_s: float | None = None         # all repeats.max rounds (adaptive repeats), where that is more
    rounds: tuple[int, int] = (1, 1)     # (repeats.min, repeats.max)
    measured_configs: int = 0            # configurations whose trial time an earlier run measured
    configs: int = 0
    assumptions: list[str] = field(default_factory=list)

    def describe(self) -> str:
        basis = (f"trial times measured by an earlier run for {self.measured_configs} of {self.configs} "
                 f"configurations" if self.measured_configs else "no earlier run of this study")
        more = (f"; up to {_minutes(self.up_to_s)} if adaptive repeats run all {self.rounds[1]} rounds"
                if self.up_to_s is not None else "")
        return (f"estimated time: about {_minutes(self.likely_s)} for {self.rounds[0]} round(s){more} "
                f"(at least {_minutes(self.low_s)}; {basis})")


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def nonembedding_params(model_config: dict[str, Any]) -> float | None:
    try:
        h, i, layers = model_config["hidden_size"], model_config["intermediate_size"], \
            model_config["num_hidden_layers"]
        heads = model_config["num_attention_heads"]
    except (KeyError, TypeError):
        return None
    kv = model_config.get("num_key_value_heads") or heads
    hd = model_config.get("head_dim") or h // heads
    return float(layers * (2 * h * heads * hd + 2 * h * kv * hd + 3 * h * i))


def step_seconds(backend: str, on_gpu: bool, model_config: dict[str, Any] | None) -> float:
    """Assumed seconds per decode step: the engine's per-step overhead, plus the model's arithmetic on a CPU."""
    base = STEP_S.get((backend, "gpu" if on_gpu else "cpu"), 0.025 if on_gpu else 0.01)
    if on_gpu:
        return base
    n = nonembedding_params(model_config or {})
    return base + (2 * n / CPU_FLOPS if n else 0.0)


def pass_seconds(params: dict[str, Any], step_s: float) -> float:
    """One pass: every prompt once, in batches (offline) or as concurrent streams (served)."""
    prompts = int(params.get("prompts") or 8)
    width = int(params.get("concurrency") or params.get("batch_size") or params.get("max_num_seqs") or 1)
    if params.get("backend") == "vllm" and params.get("mode") != "served" and not params.get("batch_size"):
        width = min(prompts, int(params.get("max_num_seqs") or 256))  # vLLM's scheduler takes the whole workload
    if params.get("backend") == "llamacpp":
        width = 1                   # llama.cpp decodes one sequence at a time (its server queues the rest)
    steps = math.ceil(prompts / max(width, 1)) * int(params.get("max_output_tokens") or 32)
    return steps * step_s


def warmup_pass_seconds(params: dict[str, Any], step_s: float) -> float:
    """One warm-up pass: transformers warms one batch (every batch has the same shapes); the other engines
    run the whole workload (``Backend.warmup_requests``)."""
    if params.get("backend", "transformers") == "transformers":
        return int(params.get("max_output_tokens") or 32) * step_s
    return pass_seconds(params, step_s)


def trial_seconds(pass_s: float, min_window_s: float, warmup_passes: int, warm_pass_s: float | None = None) -> float:
    """A trial: warm-up passes, then a window of whole passes at least ``min_window_s`` long."""
    window_passes = max(1, math.ceil(min_window_s / pass_s)) if pass_s > 0 else 1
    warm = warmup_passes * (pass_s if warm_pass_s is None else warm_pass_s)
    return TRIAL_OVERHEAD_S + warm + max(min_window_s, window_passes * pass_s)


def measured_trial_seconds(study_dirs: Iterable[Path]) -> dict[str, float]:
    """config id -> median trial time (finished_at - started_at) of the finished trials of earlier runs."""
    times: dict[str, list[float]] = {}
    for d in study_dirs:
        for f in sorted((d / "trials").glob("*.json")):
            try:
                r = json.loads(f.read_text())
                if r.get("status") == "ok":
                    times.setdefault(r["config_id"], []).append(float(r["finished_at"]) - float(r["started_at"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return {cid: statistics.median(v) for cid, v in times.items() if v}


def earlier_runs(study_name: str, roots: Iterable[Path]) -> list[Path]:
    """Study directories under ``roots`` (their children, and nightly's dated folders) of this study."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for manifest in list(root.glob("*/manifest.json")) + list(root.glob("*/*/manifest.json")):
            try:
                if json.loads(manifest.read_text()).get("study") == study_name:
                    found.append(manifest.parent)
            except (OSError, ValueError):
                continue
    return found


def estimate_study(plan, *, on_gpu: bool, model_config: dict[str, Any] | None,
                   history: dict[str, float] | None = None) -> StudyEstimate:
    """The time of the plan's first ``repeats.min`` rounds, and of all ``repeats.max`` rounds where adaptive
    repeats may add rounds."""
    cfg = plan.config
    m = cfg.measurement
    history = history or {}
    device = "gpu" if on_gpu else "cpu"
    warm = max(m.warmup.min_passes, 1) + 1          # the usual: min_passes, plus one to see it stable
    assumed: set[float] = set()
    per_round = 0.0                                  # one round: every configuration once
    for c in plan.configs:
        if c.config_id in history:
            per_round += history[c.config_id]
            continue
        step = step_seconds(c.params.get("backend", "transformers"), on_gpu, model_config)
        assumed.add(round(step * 1000, 1))
        per_round += trial_seconds(pass_seconds(c.params, step), m.min_window_s, warm,
                                   warmup_pass_seconds(c.params, step))

    start_s = WORKER_START_S[device] + max(ENGINE_START_S.get(c.params.get("backend"), 0.0) for c in plan.configs)

    def fixed(rounds: int) -> float:
        return (plan.worker_starts(rounds) * (start_s + m.loaded_idle_s)
                + (m.device_idle_s if on_gpu else 0) + REPORT_S)

    rounds = plan.min_repeats
    low = fixed(rounds) + len(plan.configs) * rounds * (TRIAL_OVERHEAD_S + m.min_window_s)
    likely = max(fixed(rounds) + rounds * per_round, low)
    most = plan.max_repeats
    up_to = max(fixed(most) + most * per_round, likely) if most > rounds else None
    notes = [f"a worker start (imports, model load) ~{start_s:g} s"]
    if assumed:
        notes.insert(0, "decode step ~" + "/".join(f"{a:g}" for a in sorted(assumed)) + " ms (assumed; "
                     "a window and the warm-up are whole passes of the workload)")
    return StudyEstimate(low_s=low, likely_s=likely, up_to_s=up_to, rounds=(rounds, most),
                         measured_configs=sum(c.config_id in history for c in plan.configs),
                         configs=len(plan.configs), assumptions=notes)
