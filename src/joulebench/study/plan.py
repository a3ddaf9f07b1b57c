"""Study -> plan: every configuration and trial, with stable ids, built before anything runs.

* A *configuration* is one point of the sweep: a flat dict of resolved parameters
  (defaults filled in). Its id is a hash of those parameters.
* A *trial* is one repeat of a configuration: ``<config_id>-r<repeat>``.
* A *load group* is the set of configurations that share load-time parameters
  (model, backend, device, dtype, quantisation, parallelism, engine environment):
  one worker and one model load serve them.
* Rounds: round r runs repeat r of every configuration that still needs it, in a
  seeded shuffle (load groups shuffled, then configurations within each group), so
  drift spreads over all configurations while each group is served by one worker. The
  shuffled cycle of groups is rotated so that a round starts with the group that ended
  the round before: that group's worker, model loaded, carries on (worker reuse).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from joulebench.backends import get_backend_class, load_parameters
from joulebench.config.device import DEFAULT_DEVICE, DeviceSpec, DeviceSpecError, fence_problems
from joulebench.config.loader import LoadedStudy, errors_from_validation
from joulebench.config.study import COMMON_KEYS, OPTIONAL_WORKLOAD_KEYS, WORKLOAD_KEYS, StudyConfig, WorkloadConfig
from joulebench.study.checks import check_configurations, check_sweep_size
from joulebench.errors import StudyError, StudyErrors, did_you_mean
from joulebench.models import check_model_exists, parse_model
from joulebench.runners.environments import study_environment

PLAN_SCHEMA_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def trial_id_for(config_id: str, repeat: int) -> str:
    return f"{config_id}-r{repeat}"


@dataclass(frozen=True)
class Configuration:
    config_id: str
    params: dict[str, Any]
    load_group: str
    origin: str          # YAML path this configuration came from (for messages)

    def label(self, axes: list[str]) -> str:
        keys = axes or ["backend", "model"]
        return ", ".join(f"{k}={self.params.get(k)}" for k in keys)


@dataclass
class Plan:
    study: str
    config: StudyConfig
    configs: list[Configuration]
    axes: dict[str, list[Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    _last_groups: dict[int, str] = field(default_factory=dict, repr=False, compare=False)   # round -> its last group

    @property
    def min_repeats(self) -> int:
        return self.config.repeats.min

    @property
    def max_repeats(self) -> int:
        return self.config.repeats.max

    def by_id(self) -> dict[str, Configuration]:
        return {c.config_id: c for c in self.configs}

    def round_order(self, round_index: int, config_ids: list[str] | None = None) -> list[Configuration]:
        """Seeded blocked shuffle of round `round_index`, restricted to `config_ids` if given."""
        rng = random.Random(f"{self.config.seed}:{round_index}")
        groups: dict[str, list[Configuration]] = {}
        for c in self.configs:
            groups.setdefault(c.load_group, []).append(c)
        order = sorted(groups)
        rng.shuffle(order)
        if round_index > 0 and len(order) > 1:
            last = self._last_group(round_index - 1)
            i = order.index(last)
            order = order[i:] + order[:i]   # a rotation of the shuffled cycle: start where the last round ended
        out: list[Configuration] = []
        for g in order:
            members = list(groups[g])
            rng.shuffle(members)
            out.extend(members)
        if config_ids is not None:
            keep = set(config_ids)
            out = [c for c in out if c.config_id in keep]
        return out

    def worker_starts(self, rounds: int) -> int:
        """Model loads over the first ``rounds`` rounds: a worker per change of load group along the run
        order (workers live across rounds), or per experiment without reuse."""
        opts = self.config.runner_options
        orders = [[c.load_group for c in self.round_order(r)] for r in range(rounds)]
        order = [g for o in orders for g in o]
        if opts.one_worker_per_trial:
            return len(order)
        if not opts.reuse_workers:
            return sum(len(set(o)) for o in orders)
        return sum(1 for i, g in enumerate(order) if i == 0 or g != order[i - 1])

    def _last_group(self, round_index: int) -> str:
        if round_index not in self._last_groups:
            self._last_groups[round_index] = self.round_order(round_index)[-1].load_group
        return self._last_groups[round_index]

    def all_trial_ids(self) -> list[str]:
        return [trial_id_for(c.config_id, r) for c in self.configs for r in range(self.max_repeats)]

    def to_json(self) -> dict[str, Any]:
        trials = []
        for r in range(self.max_repeats):
            for pos, c in enumerate(self.round_order(r)):
                trials.append({"trial_id": trial_id_for(c.config_id, r), "config_id": c.config_id,
                               "repeat": r, "round": r, "position": pos,
                               "conditional": r >= self.min_repeats})
        axes = list(self.axes)
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "study": self.study,
            "seed": self.config.seed,
            "axes": self.axes,
            "repeats": self.config.repeats.model_dump(),
            "configs": [{"config_id": c.config_id, "params": c.params, "load_group": c.load_group,
                         "label": c.label(axes), "origin": c.origin} for c in self.configs],
            "trials": trials,
            "skipped": self.skipped,
            "counts": {"configs": len(self.configs), "load_groups": len({c.load_group for c in self.configs}),
                       "trials_min": len(self.configs) * self.min_repeats,
                       "trials_max": len(self.configs) * self.max_repeats},
        }

    def fingerprint(self) -> str:
        """Changes whenever the set of configurations or repeats changes."""
        return short_hash({"configs": [c.params for c in self.configs],
                           "repeats": self.config.repeats.model_dump(), "seed": self.config.seed}, 16)


def _known_keys(backend_cls) -> list[str]:
    return list(COMMON_KEYS) + list(WORKLOAD_KEYS) + list(backend_cls.Params.model_fields)


def _resolve(raw: dict[str, Any], origins: dict[str, str], loaded: LoadedStudy) -> dict[str, Any]:
    """Validate one configuration's raw parameters and fill in defaults."""
    file = loaded.file
    backend_name = raw.get("backend", "transformers")
    try:
        backend_cls = get_backend_class(backend_name)
    except StudyError as e:
        raise StudyError(e.detail, file=file, path=origins.get("backend", "backend"), hint=e.hint) from None
    known = _known_keys(backend_cls)
    problems: list[StudyError] = []
    for key in raw:
        if key not in known:
            problems.append(StudyError(
                f"'{key}' is not a parameter of backend '{backend_name}'", file=file,
                path=origins.get(key, key),
                hint=did_you_mean(key, known) or f"{backend_name} parameters: "
                     f"{', '.join(backend_cls.Params.model_fields)}"))
    if problems:
        raise StudyErrors(problems)
    try:
        model = parse_model(raw["model"], yaml_path=origins.get("model", "model"))
    except StudyError as e:
        raise StudyError(e.detail, file=file, path=e.path, hint=e.hint) from None
    wl_raw = {k: raw[k] for k in WORKLOAD_KEYS if k in raw}
    try:
        workload = WorkloadConfig.model_validate(wl_raw).model_dump()
    except ValidationError as e:
        raise _with_origins(e, origins, file) from None
    engine_raw = {k: v for k, v in raw.items() if k in backend_cls.Params.model_fields}
    try:
        engine = backend_cls.Params.model_validate(engine_raw).model_dump(mode="json")
    except ValidationError as e:
        raise _with_origins(e, origins, file) from None
    device = raw.get("device", DEFAULT_DEVICE)
    try:
        DeviceSpec.parse(device)
    except DeviceSpecError as e:
        raise StudyError(str(e), file=file, path=origins.get("device", "device")) from None
    params = {"model": model.spec, "backend": backend_name, "device": device}
    # optional workload shapes appear in the parameters only when set (configuration ids stay as they were)
    params.update({k: v for k, v in workload.items() if v is not None or k not in OPTIONAL_WORKLOAD_KEYS})
    params.update(engine)
    return params


def _with_origins(exc: ValidationError, origins: dict[str, str], file: str) -> StudyErrors:
    out = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter '{key}'"
        hint = None
        if err["type"] == "literal_error":
            import re

            expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            hint = did_you_mean(err.get("input"), expected) or (f"one of: {', '.join(expected)}" if expected else None)
        out.append(StudyError(msg, file=file, path=origins.get(key, key), hint=hint))
    return StudyErrors(out)


def combination_problems(params: dict[str, Any]) -> list[str]:
    """Impossible combinations, checked per configuration (pure)."""
    problems = []
    backend_cls = get_backend_class(params["backend"])
    check = getattr(backend_cls, "check_params", None)
    if check is not None:
        problems.extend(check(params))
    shaped = [k for k in ("output_tokens", "classes") if params.get(k)]
    if shaped and params.get("mode") != "served" and params["backend"] != "vllm":
        problems.append(f"workload.{shaped[0]} (per-request output lengths) needs mode: served or backend: vllm")
    if params.get("slo") and params.get("mode") != "served":
        problems.append("workload.slo applies to mode: served (goodput under a latency SLO)")
    if params.get("max_input_tokens") and params["dataset"] == "synthetic" \
            and params["input_tokens"] > params["max_input_tokens"]:
        problems.append("input_tokens is larger than max_input_tokens")
    return problems


def _check_fence(configs: list[Configuration], loaded: LoadedStudy) -> None:
    """``runner_options.gpus``: a configuration whose device names a GPU outside it is refused (exit 2).
    Here only explicit ordinals against a fence of ordinals; UUIDs and auto are checked at run."""
    used = [(c.origin, DeviceSpec.of(c.params)) for c in configs]
    problems = fence_problems(loaded.config.runner_options.gpus, used)
    if problems:
        raise StudyErrors([StudyError(p, file=loaded.file, path="runner_options.gpus",
                                      hint="use a device inside the fence, or widen runner_options.gpus")
                           for p in problems])


def _base_parameters(loaded: LoadedStudy) -> tuple[dict[str, Any], dict[str, str]]:
    """The study's top-level, workload and engine parameters, and the YAML path each came from.

    An ``engine:`` entry named after a backend and holding a mapping (``engine: {sglang: {...}}``) is
    that backend's own section: see ``_backend_sections``."""
    from joulebench.backends import backend_names

    cfg = loaded.config
    base: dict[str, Any] = {"model": cfg.model, "backend": cfg.backend, "device": cfg.device}
    origins: dict[str, str] = {"model": "model", "backend": "backend", "device": "device"}
    fields_set = cfg.workload.model_fields_set
    for k in WORKLOAD_KEYS:
        base[k] = getattr(cfg.workload, k)
        if k in fields_set:
            origins[k] = f"workload.{k}"
    for k, v in cfg.engine.items():
        if k in backend_names() and isinstance(v, dict):
            continue
        base[k] = v
        origins[k] = f"engine.{k}"
    overlap = [k for k in cfg.engine if k in COMMON_KEYS or k in WORKLOAD_KEYS]
    if overlap:
        raise StudyError(f"'{overlap[0]}' belongs at the top level or under workload:, not under engine:",
                         file=loaded.file, path=f"engine.{overlap[0]}")
    return base, origins


def _variants(loaded: LoadedStudy) -> list[tuple[str, dict[str, Any]]]:
    """(YAML path, parameters) of each ``experiments:`` entry; one empty variant without them."""
    if not loaded.config.experiments:
        return [("", {})]
    variants = []
    for i, exp in enumerate(loaded.config.experiments):
        if not isinstance(exp, dict) or not exp:
            raise StudyError("each experiment must be a non-empty mapping of parameters",
                             file=loaded.file, path=f"experiments[{i}]")
        variants.append((f"experiments[{i}]", exp))
    return variants


def _backend_sections(loaded: LoadedStudy) -> dict[str, dict[str, Any]]:
    """``engine: {<backend>: {...}}``: parameters that apply only to configurations of that backend,
    so ``backend`` can be a sweep axis while each engine keeps parameters the others do not have."""
    from joulebench.backends import backend_names

    out = {}
    for k, v in loaded.config.engine.items():
        if k in backend_names() and isinstance(v, dict):
            overlap = [p for p in v if p in COMMON_KEYS or p in WORKLOAD_KEYS]
            if overlap:
                raise StudyError(f"'{overlap[0]}' belongs at the top level or under workload:, not under "
                                 f"engine.{k}:", file=loaded.file, path=f"engine.{k}.{overlap[0]}")
            out[k] = v
    return out


def _combine(base: dict[str, Any], origins: dict[str, str], vpath: str, variant: dict[str, Any],
             axes: dict[str, list[Any]], combo: tuple,
             sections: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The raw parameters of one variant x sweep combination, and where each came from.
    Precedence: engine < engine.<backend> < the experiment < the sweep."""
    raw = dict(base)
    orig = dict(origins)
    for k, v in variant.items():
        raw[k] = v
        orig[k] = f"{vpath}.{k}"
    for n, v in zip(axes, combo):
        raw[n] = v
        orig[n] = f"sweep.{n}[{axes[n].index(v)}]"
    section = (sections or {}).get(raw.get("backend"), {})
    for k, v in section.items():
        if k not in variant and k not in axes:
            raw[k] = v
            orig[k] = f"engine.{raw['backend']}.{k}"
    return raw, orig


def _load_group(params: dict[str, Any], config_id: str, cfg: StudyConfig) -> str:
    """The load group: configurations that one worker and one model load can serve."""
    load_params = load_parameters(params)
    load_params["python"] = study_environment(params["backend"], cfg.runner_options.environment_options())
    load_params["image"] = cfg.runner_options.docker.image
    if cfg.runner_options.one_worker_per_trial:
        return "g-" + config_id[:8]
    return "g-" + short_hash(load_params, 8)


def _invalid_combination(desc: str, where: str, problems: list[str], file: str) -> StudyError:
    return StudyError(f"impossible combination ({desc}): {'; '.join(problems)}", file=file, path=where,
                      hint="change the sweep, or set runner_options.on_invalid: skip "
                           "to skip and list such combinations")


def build_plan(loaded: LoadedStudy) -> Plan:
    """Expand the sweep and validate every configuration. Raises StudyError (exit 2)."""
    cfg = loaded.config
    base, origins = _base_parameters(loaded)
    sections = _backend_sections(loaded)
    axes = dict(cfg.sweep)
    variants = _variants(loaded)
    names = list(axes)
    check_sweep_size(axes, len(variants), file=loaded.file)
    combos = list(itertools.product(*[axes[n] for n in names])) if names else [()]
    configs: list[Configuration] = []
    seen: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    invalid: list[StudyError] = []
    for vpath, variant in variants:
        for combo in combos:
            raw, orig = _combine(base, origins, vpath, variant, axes, combo, sections)
            params = _resolve(raw, orig, loaded)
            where = vpath or ("sweep" if names else "(study)")
            problems = combination_problems(params)
            if problems:
                desc = ", ".join(f"{n}={v!r}" for n, v in zip(names, combo)) or where
                if cfg.runner_options.on_invalid == "skip":
                    skipped.append({"params": params, "reasons": problems, "where": desc})
                else:
                    invalid.append(_invalid_combination(desc, where, problems, loaded.file))
                continue
            cid = short_hash(params)
            if cid in seen:
                raise StudyError(f"this configuration is the same as {seen[cid]}", file=loaded.file,
                                 path=where, hint="remove the duplicate")
            seen[cid] = where
            configs.append(Configuration(cid, params, _load_group(params, cid, cfg), where))
    if invalid:
        raise StudyErrors(invalid)
    _check_fence(configs, loaded)
    if not configs:
        raise StudyError("every configuration was skipped as invalid; nothing to run", file=loaded.file,
                         path="sweep")
    for c in {c.params["model"] for c in configs}:
        src = parse_model(c)
        check_model_exists(src, base_dir=loaded.base_dir)
    check_configurations(configs, base_dir=loaded.base_dir, file=loaded.file,
                         host_gpus=cfg.runner != "ray")    # Ray's GPUs are the cluster's
    return Plan(study=cfg.name, config=cfg, configs=configs, axes=axes, skipped=skipped)
