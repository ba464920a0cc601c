"""Errors that cross layers, each carrying an HTTP status hint and a stable code."""

from __future__ import annotations


class RxfedError(Exception):
    """Base of every error rxfed raises on purpose.

    ``status`` is a hint for the HTTP layer (like h11's ``error_status_hint``): the node maps
    it to a response in one middleware. ``code`` is a stable machine-readable name that
    clients and scripts may rely on; the message is for people and never contains secrets.
    """

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message}


class BadRequest(RxfedError):
    status = 400
    code = "bad_request"


class Unauthorized(RxfedError):
    status = 401
    code = "unauthorized"


class Forbidden(RxfedError):
    status = 403
    code = "forbidden"


class NotFound(RxfedError):
    status = 404
    code = "not_found"


class Conflict(RxfedError):
    status = 409
    code = "conflict"


class Gone(RxfedError):
    status = 410
    code = "gone"


class PayloadTooLarge(RxfedError):
    status = 413
    code = "payload_too_large"


class QuotaExceeded(RxfedError):
    status = 413
    code = "quota_exceeded"


class RateLimited(RxfedError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RxfedError):
    """The node cannot do this now (its store cannot write, it is stopping): try again after
    ``retry_after`` seconds (the reply's ``Retry-After``)."""

    status = 503
    code = "unavailable"
    retry_after: float = 5.0


class RequestTimeout(RxfedError):
    """The client took too long to send its request; the node closes the connection."""

    status = 408
    code = "request_timeout"


class UnsupportedEncoding(RxfedError):
    """A request body in a content coding the node does not decode (it takes identity only)."""

    status = 415
    code = "unsupported_encoding"
    headers = {"Accept-Encoding": "identity"}  # RFC 9110 15.5.16: the codings that are taken


class Overloaded(Unavailable):
    """The node sheds this request: more are waiting than it can answer in time."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after
