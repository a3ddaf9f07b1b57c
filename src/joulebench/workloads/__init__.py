"""Workloads: where prompts come from and how they are cut to length.

* a ``.jsonl`` file with one ``prompt`` field per line (other fields ignored);
* ``aienergyscore``: the AI Energy Score text-generation prompt set, from a local file
  or folder the user points to (``dataset_path`` or ``JOULEBENCH_AIENERGYSCORE``), the
  joulebench cache, or the Hugging Face hub through ``datasets`` when online;
* ``synthetic``: prompts of exactly ``input_tokens`` tokens (random token ids, seeded).

Shapes (served mode, or vLLM offline): ``output_tokens`` draws each request's forced output length
from a stated distribution (seeded, clipped to [1, max_output_tokens]); ``classes`` splits the
requests into named classes by share (counts by largest remainder, order shuffled with the seed),
each with its own prompt length (synthetic prompts of that many tokens, or dataset prompts cut to
it) and forced output length. Each Request carries its class and its target output length.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from joulebench.backends.base import Request
from joulebench.errors import StudyError

AIENERGYSCORE_HUB_ID = "AIEnergyScore/text_generation"
AIENERGYSCORE_FILE = "aienergyscore_text_generation.jsonl"


def read_prompts_jsonl(path: Path, *, limit: int | None, yaml_path: str) -> list[str]:
    """The prompts of a .jsonl file (one JSON object with a ``prompt`` field per line).
    Every problem is a StudyError naming the file, the line and the fix."""
    if path.is_dir():
        raise StudyError(f"prompts file '{path}' is a directory", path=yaml_path,
                         hint="point to the .jsonl file inside it")
    prompts: list[str] = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise StudyError(f"cannot read prompts file '{path}': {e.strerror}", path=yaml_path) from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if _take_prompt(line, path, lineno, yaml_path, prompts) and limit is not None \
                        and len(prompts) >= limit:
                    break
        except UnicodeDecodeError:
            raise StudyError(f"{path}:{lineno + 1}: not UTF-8 text (is it a binary file?)", path=yaml_path,
                             hint="a prompts file is UTF-8 JSON Lines: one {\"prompt\": \"...\"} object per line") \
                from None
    if not prompts:
        raise StudyError(f"prompts file '{path}' holds no prompts", path=yaml_path)
    return prompts


def _take_prompt(line: str, path: Path, lineno: int, yaml_path: str, prompts: list[str]) -> bool:
    """Append the prompt of one line; False for a blank or metadata line."""
    line = line.strip()
    if not line:
        return False
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}:{lineno}: not valid JSON ({e.msg})", path=yaml_path,
                         hint="each line must be one JSON object, e.g. {\"prompt\": \"Hello\"}") from None
    text = obj.get("prompt") if isinstance(obj, dict) else None
    if text is None and isinstance(obj, dict) and obj and all(str(k).startswith("_") for k in obj):
        return False  # a metadata line (provenance, licence)
    if text is None and isinstance(obj, dict):
        text = obj.get("text")
    if not isinstance(text, str):
        raise StudyError(f"{path}:{lineno}: no 'prompt' string field", path=yaml_path,
                         hint="each line must be a JSON object with a \"prompt\" field")
    prompts.append(text)
    return True


def _aienergyscore_candidates(dataset_path: str | None) -> list[Path]:
    cands = []
    for p in (dataset_path, os.environ.get("JOULEBENCH_AIENERGYSCORE")):
        if p:
            p = Path(p).expanduser()
            cands.append(p / AIENERGYSCORE_FILE if p.is_dir() else p)
    from joulebench.models.synthetic import cache_root

    cands.append(cache_root() / "datasets" / AIENERGYSCORE_FILE)
    return cands


def aienergyscore_local_file(dataset_path: str | None) -> Path | None:
    """The local copy of the AI Energy Score prompts, if there is one."""
    return next((c for c in _aienergyscore_candidates(dataset_path) if c.is_file()), None)


def load_aienergyscore(dataset_path: str | None, *, limit: int | None) -> list[str]:
    local = aienergyscore_local_file(dataset_path)
    if local is not None:
        return read_prompts_jsonl(local, limit=limit, yaml_path="workload.dataset_path")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise StudyError("the AI Energy Score prompt set is not available offline", path="workload.dataset",
                         hint="set workload.dataset_path (or JOULEBENCH_AIENERGYSCORE) to a local copy of "
                              f"{AIENERGYSCORE_FILE}")
    try:
        import datasets  # type: ignore
    except ImportError:
        raise StudyError("the AI Energy Score prompt set was not found locally and `datasets` is not installed",
                         path="workload.dataset",
                         hint="pip install datasets, or point workload.dataset_path to a local jsonl copy") from None
    ds = datasets.load_dataset(AIENERGYSCORE_HUB_ID, split="train")
    col = "text" if "text" in ds.column_names else ds.column_names[0]
    prompts = [str(x) for x in ds[col]]
    dest = _aienergyscore_candidates(None)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    from joulebench.results.store import atomic_write_bytes

    atomic_write_bytes(dest, "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode())
    return prompts[:limit] if limit else prompts


def draw_output_lengths(dist: dict[str, Any], n: int, seed: int, max_output_tokens: int) -> list[int]:
    """``n`` output lengths from ``dist`` (a config.study.OutputLengths as a dict), reproducible from
    ``seed``, rounded and clipped to [1, max_output_tokens]."""
    import math

    rng = random.Random(f"output-lengths-{seed}")
    kind = dist["distribution"]
    if kind == "fixed":
        raw = [float(dist["value"])] * n
    elif kind == "uniform":
        raw = [float(rng.randint(int(dist["low"]), int(dist["high"]))) for _ in range(n)]
    elif kind == "normal":
        raw = [rng.gauss(float(dist["mean"]), float(dist["std"])) for _ in range(n)]
    elif kind == "lognormal":   # parameterised by the length's own mean and standard deviation
        m, sd = float(dist["mean"]), float(dist["std"])
        sigma2 = math.log(1.0 + (sd / m) ** 2)
        raw = [rng.lognormvariate(math.log(m) - sigma2 / 2, math.sqrt(sigma2)) for _ in range(n)]
    elif kind == "choice":
        raw = [float(x) for x in rng.choices(list(dist["values"]), weights=dist.get("weights"), k=n)]
    else:
        raise StudyError(f"unknown output length distribution '{kind}'", path="workload.output_tokens.distribution")
    return [min(int(max_output_tokens), max(1, int(round(x)))) for x in raw]


def assign_classes(classes: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """The class of each of ``n`` requests: counts by share (largest remainder), order shuffled with ``seed``."""
    exact = [c["share"] * n for c in classes]
    counts = [int(x) for x in exact]
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    out = [c for c, k in zip(classes, counts) for _ in range(k)]
    random.Random(f"classes-{seed}").shuffle(out)
    return out


def build_requests(workload: dict[str, Any], tokenizer, *, base_dir: Path | None = None) -> list[Request]:
    """The workload's requests, shaped by ``output_tokens`` / ``classes`` where given (see the module)."""
    reqs = _build_prompts(workload, tokenizer, base_dir=base_dir)
    n, seed = len(reqs), int(workload.get("seed", 0))
    max_out = int(workload.get("max_output_tokens") or 32)
    classes = workload.get("classes")
    if classes:
        shaped = []
        for req, cls in zip(reqs, assign_classes(classes, n, seed)):
            ids = req.prompt_token_ids
            if ids is not None and len(ids) > int(cls["input_tokens"]):
                ids = ids[: int(cls["input_tokens"])]
                req = replace(req, prompt=tokenizer.decode(ids), prompt_token_ids=ids)
            shaped.append(replace(req, request_class=cls["name"],
                                  max_output_tokens=min(max_out, int(cls["output_tokens"]))))
        return shaped
    if workload.get("output_tokens"):
        lengths = draw_output_lengths(workload["output_tokens"], n, seed, max_out)
        return [replace(r, max_output_tokens=k) for r, k in zip(reqs, lengths)]
    return reqs


def _build_prompts(workload: dict[str, Any], tokenizer, *, base_dir: Path | None = None) -> list[Request]:
    """The workload's requests for one trial (deterministic for a given workload and seed).

    ``tokenizer`` is a :class:`joulebench.models.tokenizer.TextTokenizer` (or None for engines that
    tokenise themselves; then synthetic prompts are not available and truncation is by the engine).
    """
    dataset = workload.get("dataset", "synthetic")
    n = int(workload.get("prompts", 8))
    seed = int(workload.get("seed", 0))
    max_in = workload.get("max_input_tokens")
    if dataset == "synthetic":
        length = int(workload.get("input_tokens", 32))
        classes = workload.get("classes")
        lengths = ([int(c["input_tokens"]) for c in assign_classes(classes, n, seed)] if classes
                   else [length] * n)
        if tokenizer is None:
            raise StudyError("synthetic prompts need a tokenizer", path="workload.dataset")
        rng = random.Random(seed)
        lo = 3 if tokenizer.vocab_size > 300 else 0
        hi = min(tokenizer.vocab_size, 259) - 1
        reqs = []
        for i in range(n):
            ids = tuple(rng.randint(lo, hi) for _ in range(lengths[i]))
            reqs.append(Request(index=i, prompt=tokenizer.decode(ids), prompt_token_ids=ids))
        return reqs
    if dataset == "aienergyscore":
        prompts = load_aienergyscore(workload.get("dataset_path"), limit=n)
    else:
        path = Path(dataset).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        prompts = read_prompts_jsonl(path, limit=n, yaml_path="workload.dataset")
    if len(prompts) < n:  # cycle so `prompts: N` always means N requests
        prompts = [prompts[i % len(prompts)] for i in range(n)]
    reqs = []
    for i, text in enumerate(prompts[:n]):
        ids = None
        if tokenizer is not None:
            ids = tokenizer.encode(text)
            if max_in is not None and len(ids) > int(max_in):
                ids = ids[: int(max_in)]
            ids = tuple(ids)
        reqs.append(Request(index=i, prompt=text, prompt_token_ids=ids))
    return reqs
