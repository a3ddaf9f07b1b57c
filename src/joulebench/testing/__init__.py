"""Test doubles: the NVML fake (:mod:`~joulebench.testing.fake_nvml`) and fault injection
(:mod:`~joulebench.testing.faults`).

Production code never picks a double by itself: the entry points (the CLI, the worker, the sampler's
process) call :func:`install_from_environment`, so ``JOULEBENCH_FAKE_NVML=<spec.json>`` reaches every
process of a study. A script of your own calls it too, or passes a fake to
:func:`joulebench.devices.nvml.use_nvml_library`."""
from __future__ import annotations

import os
import threading
from typing import Any

from joulebench.devices.nvml import FAKE_ENV, select_nvml_library
from joulebench.errors import DeviceError

_lock = threading.Lock()
_fakes: dict[str, Any] = {}


def fake_nvml_from_environment() -> Any | None:
    """The fake NVML of the spec file ``$JOULEBENCH_FAKE_NVML`` names (one per spec in a process), or None
    when the variable is unset or empty."""
    path = os.environ.get(FAKE_ENV)
    if not path:
        return None
    with _lock:
        if path not in _fakes:
            from joulebench.testing.fake_nvml import FakeNVML

            try:
                _fakes[path] = FakeNVML.from_spec(path)
            except (OSError, ValueError) as e:
                raise DeviceError(f"{FAKE_ENV}={path}: cannot load the fake NVML spec: {e}") from e
        return _fakes[path]


def install_from_environment() -> None:
    """Let ``$JOULEBENCH_FAKE_NVML`` choose this process's NVML from now on: the fake of the spec file it
    names, the real ``pynvml`` while it is unset or empty (read at every load, so a later change counts)."""
    select_nvml_library(fake_nvml_from_environment)
