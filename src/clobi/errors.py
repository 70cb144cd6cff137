"""One exception tree for Clobi.

Each class's docstring is its default message; the CLI maps classes to named exit codes
(`clobi.cli.exitcodes`) and a later API maps them to HTTP statuses, both in one place.
Driver errors (sqlite3, OSError, …) are translated into these at the engine boundary.
"""

from __future__ import annotations


class ClobiError(Exception):
    """Clobi failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(ClobiError):
    """The command was used wrongly."""


class SpecError(ClobiError):
    """The job spec is invalid."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{where}{len(problems)} {noun} in the job spec, nothing was submitted:\n{lines}"
        )


class NotFound(ClobiError):
    """No such object."""


class Conflict(ClobiError):
    """The object is not in a state that allows this."""


class StaleAttempt(Conflict):
    """The attempt is no longer the job's current attempt; its report was refused."""


class SessionError(ClobiError):
    """The session cannot be used."""


class StoreUnavailable(ClobiError):
    """The store cannot be reached or is busy for too long."""


class SandboxError(ClobiError):
    """A sandbox archive cannot be stored or read."""


class UnsafeArchive(SandboxError):
    """The archive holds a member that is not allowed."""


class MissingExtra(ClobiError):
    """An optional dependency is missing."""


class Unauthorized(ClobiError):
    """No valid token: it is missing, malformed, unknown, expired, revoked or already used."""


class Forbidden(ClobiError):
    """The token is valid but its role or scope does not allow this."""


class ConfigError(SessionError):
    """The session's configuration (clobi.toml) is invalid."""

    def __init__(self, problems: list[str], source: str = "clobi.toml") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}, nothing was changed:\n{lines}")


class ProviderError(ClobiError):
    """A provider could not be reached or refused a request."""
