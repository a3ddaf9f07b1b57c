"""Checks of a study that need no model and no GPU, run at `plan` and again at `run` before the
first worker starts: every error that is the study's fault is found here (exit 2, naming the
file, the YAML path and the fix), never as a failed trial after a model has loaded."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from joulebench.errors import StudyError, StudyErrors
from joulebench.config.device import DeviceSpec

MAX_CONFIGURATIONS = 100_000        # a plan beyond this is refused before it is expanded
MAX_PROMPT_FILE_LINES = 1_000_000   # lines of a prompts file checked at plan


def check_sweep_size(axes: dict[str, list[Any]], variants: int, *, file: str) -> int:
    """The number of configurations the sweep expands to; StudyError when over MAX_CONFIGURATIONS.
    Pure arithmetic on the axis lengths: answers at once for any size."""
    total = variants * math.prod(len(v) for v in axes.values())
    if total > MAX_CONFIGURATIONS:
        biggest = sorted(axes.items(), key=lambda kv: -len(kv[1]))[:3]
        listed = ", ".join(f"{k} ({len(v):,} values)" for k, v in biggest)
        raise StudyError(
            f"the sweep expands to {total:,} configurations; joulebench plans at most {MAX_CONFIGURATIONS:,}",
            file=file, path="sweep",
            hint=f"shorten the largest axes: {listed}; or split the study into several files")
    return total


def resolve_dataset(dataset: str, base_dir: Path | None) -> Path:
    path = Path(dataset).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    return path


def check_prompts_file(path: Path, *, yaml_path: str, file: str | None = None) -> int:
    """Read a prompts .jsonl the way the worker will; returns the number of prompts.
    Raises StudyError naming the file, the line and the fix."""
    from joulebench.workloads import read_prompts_jsonl

    try:
        return len(read_prompts_jsonl(path, limit=MAX_PROMPT_FILE_LINES, yaml_path=yaml_path))
    except StudyError as e:
        if file and not e.file:
            raise StudyError(e.detail, file=file, path=e.path, hint=e.hint) from None
        raise


def _check_workload(params: dict[str, Any], base_dir: Path | None, file: str) -> None:
    dataset = params.get("dataset", "synthetic")
    if dataset == "aienergyscore":
        from joulebench.workloads import aienergyscore_local_file

        local = aienergyscore_local_file(params.get("dataset_path"))
        if local is not None:
            check_prompts_file(local, yaml_path="workload.dataset_path", file=file)
        return
    if dataset != "synthetic":
        check_prompts_file(resolve_dataset(dataset, base_dir), yaml_path="workload.dataset", file=file)


def model_config_of(model: str, base_dir: Path | None) -> dict[str, Any] | None:
    """The model's config (a built-in architecture, or a local directory's config.json); None for a hub
    id or an unreadable file (nothing is downloaded)."""
    from joulebench.models import architectures, parse_model

    src = parse_model(model)
    if src.kind == "synthetic":
        return architectures()[src.arch]
    if src.kind == "local":
        try:
            cfg = json.loads((resolve_dataset(src.path, base_dir) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return cfg if isinstance(cfg, dict) else None
    return None


def model_context_length(model: str, base_dir: Path | None) -> int | None:
    """The model's context length from its config (built-in architecture or a local directory)."""
    cfg = model_config_of(model, base_dir)
    n = cfg.get("max_position_embeddings") if cfg else None
    return int(n) if isinstance(n, int) and n > 0 else None


def check_local_model(model: str, base_dir: Path | None, file: str) -> None:
    """A local model directory must hold a config.json (what every engine loads first)."""
    from joulebench.models import parse_model

    src = parse_model(model)
    if src.kind != "local":
        return
    path = resolve_dataset(src.path, base_dir)
    if path.is_dir() and not (path / "config.json").is_file():
        raise StudyError(f"model directory '{src.path}' has no config.json", file=file, path="model",
                         hint="point model: to a Hugging Face model folder (config.json, weights, tokenizer), "
                              "a .gguf file, or synthetic:<arch>")


def _check_lengths(params: dict[str, Any], where: str, base_dir: Path | None, file: str) -> StudyError | None:
    ctx = model_context_length(params["model"], base_dir)
    if ctx is None:
        return None
    n_in = params.get("max_input_tokens") if params.get("dataset", "synthetic") != "synthetic" \
        else params.get("input_tokens")
    n_out = int(params.get("max_output_tokens") or 0)
    if n_in is not None and int(n_in) + n_out > ctx:
        key = "input_tokens" if params.get("dataset", "synthetic") == "synthetic" else "max_input_tokens"
        path = f"workload.{key}" if where == "(study)" else f"{where} (workload.{key})"
        return StudyError(f"{key} {n_in} + max_output_tokens {n_out} exceed the model's context length "
                          f"({ctx} tokens, max_position_embeddings)", file=file, path=path,
                          hint=f"keep {key} + max_output_tokens <= {ctx}")
    return None


def check_device(device: str, where: str, file: str) -> StudyError | None:
    """A device that asks for GPUs this host does not have (``cuda:7`` on a one-GPU machine, ``cuda`` without
    NVML): the study's fault, said before anything loads."""
    from joulebench.config.device import DeviceSpec
    from joulebench.errors import JoulebenchError

    spec = DeviceSpec.parse(device)
    if spec.is_cpu or spec.is_auto:
        return None
    where = "device" if where == "(study)" else f"{where} (device: {device})"
    try:
        resolved = spec.resolve()
    except JoulebenchError as e:
        return StudyError(str(e).split("\n")[0], file=file, path=where,
                          hint="use a GPU this machine has (`joulebench env` lists them), device: auto, or cpu")
    if not resolved.devices:
        return StudyError(f"device '{device}' asks for a GPU, but none is visible here", file=file,
                          path=where,
                          hint="run on a GPU machine, or use device: auto (the CPU when there is no GPU)")
    return None


def check_configurations(configs, *, base_dir: Path | None, file: str, host_gpus: bool = True) -> None:
    """Workload files, local model folders, input lengths and (where the GPUs are this host's) the devices of
    every configuration (each once)."""
    problems: list[StudyError] = []
    seen: set[str] = set()
    devices: set[str] = set()
    for c in configs:
        device = str(DeviceSpec.of(c.params))
        if host_gpus and device not in devices:
            devices.add(device)
            err = check_device(device, c.origin, file)
            if err is not None:
                problems.append(err)
        p = c.params
        key = json.dumps([p.get("dataset"), p.get("dataset_path"), p["model"], p.get("input_tokens"),
                          p.get("max_input_tokens"), p.get("max_output_tokens")], default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            _check_workload(p, base_dir, file)
            check_local_model(p["model"], base_dir, file)
        except StudyError as e:
            problems.append(e)
            continue
        err = _check_lengths(p, c.origin, base_dir, file)
        if err is not None:
            problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise StudyErrors(_unique(problems))


def _unique(errors: list[StudyError]) -> list[StudyError]:
    out, seen = [], set()
    for e in errors:
        if e.render() not in seen:
            seen.add(e.render())
            out.append(e)
    return out


def check_engine_environments(configs, *, runner_options, base_dir: Path | None, log) -> None:
    """Fail early (exit 2, with the fix) when a backend's engine cannot run in its interpreter
    (the host-interpreter runners; containers carry their engine, Ray nodes check their own)."""
    import importlib.util
    import sys

    from joulebench.backends import ENGINE_PACKAGES
    from joulebench.runners.environments import require_environment, resolve_python

    for backend in sorted({c.params["backend"] for c in configs}):
        python = resolve_python(backend, runner_options.environment_options(), base_dir=base_dir)
        if python and Path(python).absolute() != Path(sys.executable).absolute():  # venvs share binaries
            log(f"checking the {backend} environment at {python}")
            require_environment(python, backend)
            continue
        missing = [p for p in ENGINE_PACKAGES.get(backend, ()) if importlib.util.find_spec(p) is None]
        if missing:
            raise StudyError(f"backend '{backend}' needs {', '.join(missing)}, which this Python "
                             f"({sys.executable}) cannot import", path="backend",
                             hint=f"install it (pip install 'joulebench[{backend}]'), or give the engine its "
                                  f"own environment: runner_options.environments.{backend}: /path/to/venv "
                                  "(docs/engines.md)")
