"""The gateway's errors as the official `openai` client sees them: each body and status is served
by an in-process httpx transport (no network) and must raise the exception a user would catch."""

from __future__ import annotations

import httpx
import openai
import pytest

from graft.gateway import errors
from graft.gateway.errors import ApiError
from graft.gateway.limits import LimitKind, Refusal

MODEL = "accounts/acme/models/pirate"


def raised_by(error: ApiError) -> openai.APIStatusError:
    """What the official client raises when the gateway answers `error` to a chat request."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(error.status, json=error.body(), headers=error.headers())

    client = openai.OpenAI(
        api_key="graft_" + "0" * 16 + "_" + "0" * 64,
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    return caught.value


@pytest.mark.parametrize(
    ("error", "exception", "type_", "code"),
    [
        (errors.bad_request("messages is required", param="messages"), openai.BadRequestError, "invalid_request_error", None),
        (errors.invalid_api_key("Incorrect API key provided: graft_ab_..."), openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (errors.expired_api_key("API key graft_ab_... expired"), openai.AuthenticationError, "invalid_request_error", "api_key_expired"),
        (errors.permission_denied(MODEL, "globex"), openai.PermissionDeniedError, "request_forbidden", "model_not_permitted"),
        (errors.model_not_found(MODEL), openai.NotFoundError, "invalid_request_error", "model_not_found"),
        (errors.rate_limited(Refusal(LimitKind.REQUESTS, 7, "Rate limit reached.")), openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (errors.rate_limited(Refusal(LimitKind.TOKENS, 7, "Rate limit reached.")), openai.RateLimitError, "tokens", "rate_limit_exceeded"),
        (errors.rate_limited(Refusal(LimitKind.CONCURRENCY, 1, "Too many.")), openai.RateLimitError, "requests", "concurrency_limit_exceeded"),
        (errors.unavailable(MODEL, 20, "scaling up from zero"), openai.InternalServerError, "service_unavailable_error", "no_replica_available"),
    ],
)  # fmt: skip
def test_the_official_client_raises_the_matching_exception(
    error: ApiError, exception: type[openai.APIStatusError], type_: str, code: str | None
) -> None:
    raised = raised_by(error)
    assert type(raised) is exception
    assert raised.status_code == error.status
    assert raised.type == type_
    assert raised.code == code
    assert error.message in raised.message


def test_every_body_has_the_four_keys() -> None:
    for error in (errors.bad_request("x"), errors.model_not_found(MODEL)):
        assert set(error.body()) == {"error"}
        assert set(error.body()["error"]) == {"message", "type", "param", "code"}
    assert errors.bad_request("x").body()["error"]["param"] is None
    assert errors.model_not_found(MODEL).body()["error"]["param"] == "model"


def test_retry_after_only_on_429_and_503() -> None:
    limited = errors.rate_limited(Refusal(LimitKind.TOKENS, 12, "Rate limit reached."))
    assert limited.headers() == {"Retry-After": "12"}
    assert "12s" in limited.message
    assert errors.unavailable(MODEL, 30, "every replica is starting").headers() == {
        "Retry-After": "30"
    }
    for error in (
        errors.invalid_api_key("no"),
        errors.permission_denied(MODEL, "globex"),
        errors.model_not_found(MODEL),
    ):
        assert error.headers() == {}


def test_the_client_sees_retry_after_on_a_429() -> None:
    raised = raised_by(errors.rate_limited(Refusal(LimitKind.REQUESTS, 9, "Rate limit reached.")))
    assert raised.response.headers["retry-after"] == "9"


def test_retry_after_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ApiError(429, "m", "requests", retry_after=0)


def test_messages_name_the_model_and_account() -> None:
    assert MODEL in errors.model_not_found(MODEL).message
    denied = errors.permission_denied(MODEL, "globex").message
    assert MODEL in denied
    assert "globex" in denied
