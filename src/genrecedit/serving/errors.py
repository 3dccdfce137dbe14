"""The service's errors and the HTTP status each is answered with (also recorded in a failed job's ``error``)."""
from __future__ import annotations

from genrecedit.errors import (ArtifactMismatchError, DuplicateItemError, EmptyInputError, GenRecEditError,
                               UnknownItemError)


class PayloadTooLargeError(GenRecEditError):
    """A request asks for more than the service accepts at once (HTTP 413)."""


class UnknownBatchError(GenRecEditError):
    """No batch with this id in the registry (HTTP 404)."""


class UnknownJobError(GenRecEditError):
    """No job with this id in the registry (HTTP 404)."""


class BatchNotActiveError(GenRecEditError):
    """The batch exists but is not active, so it cannot be rolled back (HTTP 409)."""


class BatchInUseError(GenRecEditError):
    """An item batch cannot be rolled back while an active feedback batch re-edits its items or holds them in its
    histories (HTTP 409)."""


class IdempotencyKeyReusedError(GenRecEditError):
    """An Idempotency-Key already names a job for a different request body (HTTP 409)."""


class InvalidRequestError(GenRecEditError):
    """A request value is out of range or malformed (HTTP 422)."""


class EditFailedError(GenRecEditError):
    """The edit itself failed; the previous model keeps serving (HTTP 500)."""


HTTP_STATUS: dict[type, int] = {
    UnknownItemError: 422, DuplicateItemError: 409, EmptyInputError: 422, PayloadTooLargeError: 413,
    UnknownBatchError: 404, UnknownJobError: 404, BatchNotActiveError: 409, BatchInUseError: 409,
    IdempotencyKeyReusedError: 409,
    EditFailedError: 500, ArtifactMismatchError: 409, GenRecEditError: 422,
}


def http_status(err: BaseException) -> int:
    """The status a service error is answered with (500 for anything that is not a ``GenRecEditError``)."""
    return next((HTTP_STATUS[c] for c in type(err).__mro__ if c in HTTP_STATUS), 500)


def error_body(err: BaseException) -> dict:
    """``{"status_code", "error", "detail"}``: how a failed job records its error."""
    return {"status_code": http_status(err), "error": type(err).__name__, "detail": str(err)}
