"""joulebench: energy, speed and cost of LLM inference, measured with a protocol you can publish."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "run_study", "load_results", "measure"]


def run_study(path_or_config, **kwargs):
    """Run a study (a YAML path, a dict or a StudyConfig); returns the study directory."""
    from joulebench.study.run import run_study as _run

    return _run(path_or_config, **kwargs)


def load_results(study_dir):
    """The trial table of a study directory as a pandas DataFrame (one row per trial)."""
    from joulebench.results.table import load_results as _load

    return _load(study_dir)


# Imported eagerly: importing the submodule joulebench.measure would otherwise replace a lazy
# wrapper function of the same name on the package. It imports no heavy dependency.
from joulebench.measure import measure  # noqa: E402
