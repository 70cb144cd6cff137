"""Named exit codes of the `clobi` command, and the one place errors are mapped to them."""

from __future__ import annotations

from enum import IntEnum

from clobi import errors


class ExitCode(IntEnum):
    OK = 0
    JOBS_FAILED = 1  # the command worked, but some of its jobs did not succeed
    USAGE = 2
    BAD_SPEC = 3
    NOT_FOUND = 4
    CONFLICT = 5
    SESSION = 6
    STORE_UNAVAILABLE = 7
    SANDBOX = 8
    TIMEOUT = 9
    UNAUTHORIZED = 10  # no, bad, expired or revoked token
    FORBIDDEN = 11  # the token's role or scope does not allow this
    INTERNAL = 70  # a bug, or an error without a more specific code
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


# Most specific classes first: the first match wins.
_BY_ERROR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (errors.UsageError, ExitCode.USAGE),
    (errors.Unauthorized, ExitCode.UNAUTHORIZED),
    (errors.Forbidden, ExitCode.FORBIDDEN),
    (errors.SpecError, ExitCode.BAD_SPEC),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.Conflict, ExitCode.CONFLICT),
    (errors.SessionError, ExitCode.SESSION),
    (errors.MissingExtra, ExitCode.SESSION),
    (errors.StoreUnavailable, ExitCode.STORE_UNAVAILABLE),
    (errors.SandboxError, ExitCode.SANDBOX),
    (TimeoutError, ExitCode.TIMEOUT),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code `clobi` ends with when `exc` stops a command."""
    for cls, code in _BY_ERROR:
        if isinstance(exc, cls):
            return code
    return ExitCode.INTERNAL
