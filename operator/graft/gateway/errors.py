"""Errors in OpenAI's format, so OpenAI clients raise the exception a user expects.

Body: ``{"error": {"message", "type", "param", "code"}}``, every key present (null when empty).

What decides the client's exception is the HTTP status alone: the official `openai` Python
client's `_make_status_error` (src/openai/_client.py) maps 400 to BadRequestError, 401 to
AuthenticationError, 403 to PermissionDeniedError, 404 to NotFoundError, 409 to ConflictError,
422 to UnprocessableEntityError, 429 to RateLimitError and any 5xx to InternalServerError, and
hands it `body["error"]`. It retries 408, 409, 429 and 5xx on its own, honouring Retry-After, so
429 and 503 carry that header and nothing else does.

The `type` and `code` strings are those OpenAI's API itself sends, as seen in its responses
quoted in public issue threads (looked up, not guessed):
- 401: type ``invalid_request_error``, code ``invalid_api_key``, "Incorrect API key provided:
  sk-...": github.com/popjane/free_chatgpt_api/issues/3 (openai.AuthenticationError body).
- 403: type ``request_forbidden`` (code ``unsupported_country_region_territory`` there):
  github.com/nalgeon/pokitoki/issues/42 (openai.PermissionDeniedError body).
- 404 unknown model: type ``invalid_request_error``, param ``model``, code ``model_not_found``,
  "The requested model '...' does not exist.": github.com/skorokithakis/sysaidmin/issues/9.
- 429: type ``requests`` or ``tokens`` (which limit), code ``rate_limit_exceeded``, "Rate limit
  reached for ... on requests per day (RPD): Limit 200, ...": github.com/openai/codex/issues/797.
- 503: type ``service_unavailable_error``, as OpenAI's error-code guide names it (summarised at
  developersdigest.tech/errors/api/openai-api); the code is Graft's own.
Graft's own codes (``api_key_expired``, ``concurrency_limit_exceeded``, ``no_replica_available``)
follow the same snake_case style; clients match on status and type, codes are for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graft.gateway.limits import LimitKind, Refusal

INVALID_REQUEST = "invalid_request_error"
REQUEST_FORBIDDEN = "request_forbidden"
SERVICE_UNAVAILABLE = "service_unavailable_error"

RATE_LIMIT_TYPES = {
    LimitKind.REQUESTS: "requests",
    LimitKind.TOKENS: "tokens",
    LimitKind.CONCURRENCY: "requests",  # a limit on requests, counted at once instead of per minute
}
RATE_LIMIT_CODES = {
    LimitKind.REQUESTS: "rate_limit_exceeded",
    LimitKind.TOKENS: "rate_limit_exceeded",
    LimitKind.CONCURRENCY: "concurrency_limit_exceeded",
}


@dataclass(frozen=True)
class ApiError:
    """One error answer: status, OpenAI-format body and headers."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None  # seconds; only 429 and 503 carry it

    def __post_init__(self) -> None:
        if self.retry_after is not None and self.retry_after < 1:
            # "Retry-After: 0" makes clients retry in a tight loop.
            raise ValueError(f"retry_after must be at least 1 second, not {self.retry_after}")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400: the request itself is wrong (no JSON, no `model`, a bad parameter)."""
    return ApiError(400, message, INVALID_REQUEST, code=code, param=param)


def invalid_api_key(message: str, code: str = "invalid_api_key") -> ApiError:
    """401: no key, not a key, unknown, wrong secret or expired. The message names the key by
    its public ID at most (apikeys.KeyRejected's message), never by its secret."""
    return ApiError(401, message, INVALID_REQUEST, code=code)


def expired_api_key(message: str) -> ApiError:
    return invalid_api_key(message, code="api_key_expired")


def permission_denied(model: str, account: str) -> ApiError:
    """403: a valid key of one account asked for another account's private model."""
    return ApiError(
        403,
        f"The model '{model}' belongs to another account; an API key of account "
        f"'{account}' cannot use it.",
        REQUEST_FORBIDDEN,
        code="model_not_permitted",
        param="model",
    )


def model_not_found(model: str) -> ApiError:
    """404: no Deployment serves a model of that name, loaded or not."""
    return ApiError(
        404,
        f"The model '{model}' does not exist or is not deployed; GET /v1/models lists the "
        "models you can use.",
        INVALID_REQUEST,
        code="model_not_found",
        param="model",
    )


def rate_limited(refusal: Refusal) -> ApiError:
    """429 from a limiter refusal, with its Retry-After."""
    return ApiError(
        429,
        f"{refusal.message} Please try again in {refusal.retry_after}s.",
        RATE_LIMIT_TYPES[refusal.kind],
        code=RATE_LIMIT_CODES[refusal.kind],
        retry_after=refusal.retry_after,
    )


def unavailable(model: str, retry_after: int, why: str) -> ApiError:
    """503: the model exists but nothing could serve it in time (scaling from zero, every
    replica busy or starting). `why` says which, for the person reading the error."""
    return ApiError(
        503,
        f"No replica could serve '{model}' in time: {why}. Please try again in {retry_after}s.",
        SERVICE_UNAVAILABLE,
        code="no_replica_available",
        retry_after=retry_after,
    )
