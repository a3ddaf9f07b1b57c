"""The input-length policy of a study, made explicit: where prompts come from, how long they are, and
what truncation is in force. `plan` prints it; the report repeats it beside the measured input tokens.

Lengths are in tokens where the tokenizer is known without loading an engine (synthetic models use a
byte-level tokenizer: one token per UTF-8 byte); otherwise in characters, said so.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InputPolicy:
    dataset: str
    prompts: int                       # requests per pass
    truncation: str                    # what cuts prompts, in words
    unit: str                          # "tokens" | "characters"
    lengths: tuple[int, ...] = ()      # the lengths of the prompts one pass uses (empty: synthetic)

    def describe(self) -> str:
        if not self.lengths:
            return f"inputs: {self.dataset}, {self.prompts} prompts a pass; {self.truncation}"
        xs = sorted(self.lengths)
        p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
        return (f"inputs: {self.dataset}, {self.prompts} prompts a pass, {xs[0]:,}-{xs[-1]:,} {self.unit} "
                f"(median {statistics.median(xs):,.0f}, p95 {p95:,}); {self.truncation}")


def input_policy(params: dict[str, Any], base_dir: Path | None) -> InputPolicy:
    """The policy of one configuration's workload (reads the prompts file, as the worker will)."""
    from joulebench.models import parse_model
    from joulebench.study.checks import resolve_dataset
    from joulebench.workloads import aienergyscore_local_file, read_prompts_jsonl

    dataset = params.get("dataset", "synthetic")
    n = int(params.get("prompts") or 8)
    max_in = params.get("max_input_tokens")
    if dataset == "synthetic":
        return InputPolicy(dataset, n, f"synthetic prompts of exactly {params.get('input_tokens')} tokens", "tokens")
    if dataset == "aienergyscore":
        path = aienergyscore_local_file(params.get("dataset_path"))
        if path is None:
            return InputPolicy(dataset, n, "prompt lengths unknown until the set is downloaded", "tokens")
    else:
        path = resolve_dataset(dataset, base_dir)
    prompts = read_prompts_jsonl(path, limit=n, yaml_path="workload.dataset")
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    byte_level = parse_model(params["model"]).kind == "synthetic"
    lengths = tuple(len(p.encode("utf-8")) if byte_level else len(p) for p in prompts)
    unit = "tokens" if byte_level else "characters"
    if max_in is not None:
        cut = sum(1 for x in lengths if x > int(max_in)) if byte_level else None
        truncation = (f"truncated to {int(max_in)} tokens (workload.max_input_tokens)"
                      + (f": {cut} of {n} prompts cut" if cut is not None else ""))
    else:
        truncation = "not truncated (workload.max_input_tokens cuts longer prompts)"
    return InputPolicy(dataset, n, truncation, unit, lengths)


def input_policies(configs, base_dir: Path | None) -> list[InputPolicy]:
    """One policy per distinct workload of the plan's configurations, in plan order."""
    seen: dict[tuple, InputPolicy] = {}
    for c in configs:
        p = c.params
        key = (p.get("dataset"), p.get("dataset_path"), p.get("prompts"), p.get("input_tokens"),
               p.get("max_input_tokens"), p["model"])
        if key not in seen:
            seen[key] = input_policy(p, base_dir)
    return list(dict.fromkeys(seen.values()))
