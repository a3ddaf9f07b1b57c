"""Where a study's model comes from: a hub id, a local directory, a .gguf file, or
``synthetic:<arch>`` (random weights of a built-in architecture, no download)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from joulebench.errors import StudyError, did_you_mean

SYNTHETIC_PREFIX = "synthetic:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@lru_cache(maxsize=None)
def architectures() -> dict[str, dict[str, Any]]:
    """Built-in architecture configs by name (a few hundred bytes of JSON each)."""
    out = {}
    for entry in resources.files(__package__).joinpath("archs").iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[:-5]] = json.loads(entry.read_text())
    return out


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str                 # synthetic | hub | local | gguf
    arch: str | None = None   # built-in architecture (synthetic)
    path: str | None = None   # local directory or .gguf file

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "arch": self.arch, "path": self.path,
                "synthetic_weights": self.synthetic}


def parse_model(spec: str, *, yaml_path: str = "model") -> ModelSource:
    """Classify a model spec without touching the network (pure, cheap)."""
    if not isinstance(spec, str) or not spec.strip():
        raise StudyError("model must be a non-empty string", path=yaml_path,
                         hint="e.g. synthetic:llama-3.2-1b, HuggingFaceTB/SmolLM2-135M, ./my-model or model.gguf")
    spec = spec.strip()
    if spec.startswith(SYNTHETIC_PREFIX):
        arch = spec[len(SYNTHETIC_PREFIX):]
        if arch not in architectures():
            raise StudyError(f"unknown synthetic architecture '{arch}'", path=yaml_path,
                             hint=did_you_mean(arch, architectures())
                             or f"built-in: {', '.join(sorted(architectures()))}")
        return ModelSource(spec=spec, kind="synthetic", arch=arch)
    if spec.lower().endswith(".gguf"):
        return ModelSource(spec=spec, kind="gguf", path=spec)
    if spec.startswith((".", "/", "~")) or Path(spec).expanduser().is_dir():
        return ModelSource(spec=spec, kind="local", path=str(Path(spec).expanduser()))
    if _HUB_ID.match(spec):
        return ModelSource(spec=spec, kind="hub")
    raise StudyError(f"cannot tell what model '{spec}' is", path=yaml_path,
                     hint="use synthetic:<arch>, an org/name hub id, a local directory or a .gguf file")


def check_model_exists(source: ModelSource, *, yaml_path: str = "model", base_dir: Path | None = None) -> None:
    """Plan-time check that local files exist (no network)."""
    if source.kind in ("local", "gguf"):
        p = Path(source.path).expanduser()
        if not p.is_absolute() and base_dir is not None and not p.exists():
            p = base_dir / p
        if not p.exists():
            raise StudyError(f"model path '{source.path}' does not exist", path=yaml_path,
                             hint="give an existing directory or .gguf file (relative to the current directory)")


def materialize(source: ModelSource, dtype: str = "bfloat16", *, seed: int = 0, weights: bool = True) -> Path:
    """A directory or file an engine can load from disk (synthetic models are written once and cached).

    ``weights=False``: a synthetic model's config and tokenizer only, for engines that make random
    weights themselves (``load_format: dummy``)."""
    if source.kind == "synthetic":
        from joulebench.models.synthetic import materialize_synthetic

        return materialize_synthetic(source.arch, dtype=dtype, seed=seed, weights=weights)
    if source.kind in ("local", "gguf"):
        return Path(source.path).expanduser().resolve()
    return Path(source.spec)  # a hub id: engines resolve it through their own cache
