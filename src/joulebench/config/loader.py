"""Load a study YAML safely and turn every problem into a message that names the
file, the YAML path (with its line) and, where it helps, a did-you-mean."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from joulebench.errors import StudyError, StudyErrors, did_you_mean
from joulebench.config.runner import FLAT_KEYS, DockerOptions, ProcessOptions, RayOptions, flat_yaml_path
from joulebench.config.study import (MeasurementConfig, RepeatsConfig, RunnerOptions, StudyConfig, ThermalGateConfig,
                    WarmupConfig, WorkloadConfig)

MAX_STUDY_BYTES = 1 << 20

_MODELS_AT: dict[str, type[BaseModel]] = {
    "": StudyConfig, "workload": WorkloadConfig, "repeats": RepeatsConfig,
    "measurement": MeasurementConfig, "measurement.warmup": WarmupConfig,
    "measurement.thermal_gate": ThermalGateConfig, "runner_options": RunnerOptions,
    "runner_options.process": ProcessOptions, "runner_options.docker": DockerOptions, "runner_options.ray": RayOptions,
}
# keys a mapping accepts beyond its model's fields (runner_options: each runner's options written flat)
_EXTRA_KEYS_AT: dict[str, list[str]] = {"runner_options": list(FLAT_KEYS)}


@dataclass
class LoadedStudy:
    config: StudyConfig
    text: str                 # the YAML as given (copied into the study directory)
    file: str                 # display name
    base_dir: Path            # relative paths in the study resolve against this
    lines: dict[tuple, int]   # YAML path -> line number (1-based)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: str, first_line: int, second_line: int):
        self.key, self.first_line, self.second_line = key, first_line, second_line
        super().__init__(f"key '{key}' is given twice (line {first_line} and line {second_line})")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:      # an unhashable key: SafeLoader reports it itself
                    continue
                if first != line:
                    raise DuplicateKeyError(str(key), first, line)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, except that a key given twice in one mapping is an error."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def format_path(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _node_lines(node, prefix: tuple, out: dict[tuple, int]) -> None:
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            out[prefix + (key,)] = k.start_mark.line + 1
            _node_lines_child(v, prefix + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _node_lines_child(v, prefix + (i,), out)


def _node_lines_child(node, prefix, out):
    line = node.start_mark.line + 1
    out.setdefault(prefix, line)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        _node_lines(node, prefix, out)


def yaml_lines(text: str) -> dict[tuple, int]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except Exception:
        return {}
    out: dict[tuple, int] = {}
    if node is not None:
        _node_lines(node, (), out)
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _hint(err: dict[str, Any]) -> str | None:
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
        model = _MODELS_AT.get(parent)
        if model is not None:
            fields = list(model.model_fields) + _EXTRA_KEYS_AT.get(parent, [])
            return did_you_mean(loc[-1], fields) or f"allowed keys here: {', '.join(fields)}"
    if err["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        if expected:
            return did_you_mean(err.get("input"), expected) or f"one of: {', '.join(expected)}"
    if err["type"] == "missing" and loc == ("model",):
        return "e.g. model: synthetic:llama-3.2-1b"
    return None


def errors_from_validation(exc: ValidationError, *, file: str, lines: dict[tuple, int],
                           prefix: tuple = ()) -> StudyErrors:
    out = []
    for err in exc.errors():
        loc = flat_yaml_path(prefix + tuple(err["loc"]), lines)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        line = _line_for(lines, loc)
        path = format_path(loc) + (f" (line {line})" if line else "")
        out.append(StudyError(msg, file=file, path=path, hint=_hint({**err, "loc": loc})))
    return StudyErrors(out)


def load_study(source: str | Path | dict | StudyConfig) -> LoadedStudy:
    """Read and validate a study. Raises StudyError (exit code 2) on any problem."""
    if isinstance(source, StudyConfig):
        return LoadedStudy(source, yaml.safe_dump(source.model_dump(mode="json"), sort_keys=False),
                           "<config>", Path.cwd(), {})
    if isinstance(source, dict):
        text = yaml.safe_dump(source, sort_keys=False)
        file, base = "<dict>", Path.cwd()
    else:
        path = Path(source)
        file, base = str(path), path.resolve().parent
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StudyError("study file not found", file=file,
                             hint="give the path of a study YAML, e.g. studies/quickstart.yaml") from None
        except OSError as e:
            raise StudyError(f"cannot read study file: {e.strerror}", file=file) from None
        if len(raw) > MAX_STUDY_BYTES:
            raise StudyError(f"study file is larger than {MAX_STUDY_BYTES} bytes", file=file)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StudyError("study file is not UTF-8 text", file=file) from None
    return parse_study_text(text, file=file, base_dir=base)


def parse_study_text(text: str, *, file: str = "<study>", base_dir: Path | None = None) -> LoadedStudy:
    try:
        data = safe_load_unique(text)
    except DuplicateKeyError as e:
        raise StudyError(str(e), file=file,
                         hint="keep one of them: YAML would silently use the last") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise StudyError(f"not valid YAML{where}: {problem}", file=file) from None
    except RecursionError:
        raise StudyError("YAML nesting is too deep", file=file) from None
    if data is None:
        raise StudyError("the study is empty", file=file, hint="a study needs at least `name:` and `model:`")
    if not isinstance(data, dict):
        raise StudyError(f"the study must be a mapping of keys, not a {type(data).__name__}", file=file,
                         hint="start with `name: my-study` and `model: synthetic:smollm2-135m`")
    lines = yaml_lines(text)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise errors_from_validation(e, file=file, lines=lines) from None
    except RecursionError:
        raise StudyError("the study is nested too deeply", file=file) from None
    return LoadedStudy(config, text, file, base_dir or Path.cwd(), lines)


def _without(data: dict, loc: tuple) -> bool:
    """Remove the mapping key at ``loc`` (in place); False when ``loc`` names no such key."""
    node: Any = data
    for part in loc[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, dict) and loc and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def load_recorded_study(study_dir: str | Path) -> StudyConfig | None:
    """The typed config of a study directory's recorded ``study.yaml``, for reading results back.

    Tolerant, since a study may have been written by another version: a missing or unreadable file,
    or one that is not a mapping, gives None; a value this version rejects is left out (its default
    applies) and the rest kept. None when that does not give a valid study either.
    """
    try:
        data = yaml.safe_load((Path(study_dir) / "study.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    for _ in range(8):
        try:
            return StudyConfig.model_validate(data)
        except ValidationError as e:
            removed = [_without(data, tuple(err["loc"])) for err in e.errors()]
        except RecursionError:
            return None
        if not any(removed):
            return None
    return None
