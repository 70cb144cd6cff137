"""The one place Clobi's errors become HTTP statuses, and the error bodies the API sends.

Bodies are `{"error": <class name>, "message": …, "problems": […]}`; the remote engines turn
them back into the same classes. Request validation problems are reported without echoing the
request's values (they may hold secrets).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clobi import errors
from clobi.api.models import ErrorBody

log = logging.getLogger("clobi.api")

# Most specific classes first: the first match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.ClobiError], int], ...] = (
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),  # StaleAttempt too
    (errors.SpecError, 422),
    (errors.UsageError, 422),
    (errors.UnsafeArchive, 422),
    (errors.StoreUnavailable, 503),
    (errors.SandboxError, 500),
)

_DESCRIPTIONS = {
    401: "No valid token (missing, malformed, unknown, expired, revoked or used)",
    403: "The token's role or scope does not allow this",
    404: "No such object, or one the caller may not see",
    409: "The object's state does not allow this",
    422: "The request or the job spec is invalid; `problems` lists every problem",
    503: "The store is unavailable",
}


def status_for(exc: errors.ClobiError) -> int:
    """The HTTP status an error is sent with."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of a route's error responses."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


def error_response(status: int, error: str, message: str, problems: list[str]) -> JSONResponse:
    body = ErrorBody(error=error, message=message, problems=problems)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def _clobi_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ClobiError)
    status = status_for(exc)
    if status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    problems = exc.problems if isinstance(exc, errors.SpecError) else []
    return error_response(status, type(exc).__name__, exc.message, problems)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(e) for e in exc.errors()]
    message = f"{len(problems)} problem(s) in the request:\n" + "\n".join(problems)
    return error_response(422, "UsageError", message, problems)


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{where}: {error.get('msg', 'invalid')}"


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a JSON body it cannot decode (not UTF-8): an invalid request,
        # sent as every other one is (malformed JSON already is a 422).
        return error_response(422, "UsageError", f"body: {exc.detail}", [f"body: {exc.detail}"])
    error = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}.get(exc.status_code, "HTTP")
    return error_response(exc.status_code, error, str(exc.detail), [])


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(errors.ClobiError, _clobi_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
