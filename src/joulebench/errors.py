"""Errors that reach the user, each with an exit code (DESIGN.md section 1)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_TRIALS_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


class JoulebenchError(Exception):
    """Base class: a message fit for the user, no traceback."""

    exit_code = EXIT_TRIALS_FAILED


class StudyError(JoulebenchError):
    """Invalid study or arguments: names the file, the YAML path and a hint."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 hint: str | None = None):
        self.file = file
        self.path = path
        self.hint = hint
        self.detail = message
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}"
        if self.path:
            where = f"{where}: {self.path}" if where else self.path
        text = f"{where}: {self.detail}" if where else self.detail
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class StudyErrors(StudyError):
    """Several validation problems at once."""

    def __init__(self, errors: list[StudyError]):
        self.errors = errors
        JoulebenchError.__init__(self, "\n".join(e.render() for e in errors))
        self.file = errors[0].file if errors else None
        self.path = None
        self.hint = None
        self.detail = str(self)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class DeviceError(JoulebenchError):
    """A device or meter problem, translated from the vendor library."""


class BackendError(JoulebenchError):
    """An engine failed to load or generate."""


class ResumeError(JoulebenchError):
    exit_code = EXIT_INVALID


class Interrupted(JoulebenchError):
    exit_code = EXIT_INTERRUPTED


def did_you_mean(word: str, options) -> str | None:
    import difflib

    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None
