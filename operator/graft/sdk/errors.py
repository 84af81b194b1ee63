"""The SDK's exceptions: one hierarchy, each with the reason, the message and the resource.

A user's script catches `GraftError` (or one of its kinds) and reads what to do next in its
message; it never sees a bare `kubernetes` ApiException, a bare 422, or an httpx error. The API
server's errors are translated here from their status code and their `Status` body
(`translate()`), pure so that unit tests feed it the bodies the API server sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from graft.core.names import cluster_role_name


class GraftError(Exception):
    """Something Graft refused or could not do. `reason` is one CamelCase word, `message` says
    what happened and what to do, `resource` is the full name concerned (when there is one)."""

    default_reason = "Error"

    def __init__(self, message: str, *, reason: str | None = None, resource: str | None = None):
        self.reason = reason or self.default_reason
        self.message = message
        self.resource = resource
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.resource}: " if self.resource and self.resource not in self.message else ""
        return f"{where}{self.message}"


class ConfigError(GraftError):
    """The SDK does not know where to go: no account, no gateway, no kubeconfig."""

    default_reason = "NotConfigured"


class InvalidSpec(GraftError):
    """The API server (its schema or admission) refused the object; the message lists the field
    messages it gave."""

    default_reason = "Invalid"


class NotFound(GraftError):
    default_reason = "NotFound"


class Forbidden(GraftError):
    default_reason = "Forbidden"


class Conflict(GraftError):
    default_reason = "Conflict"


class Unauthorized(GraftError):
    default_reason = "Unauthorized"


class Unavailable(GraftError):
    """The API server or the gateway could not be reached or answered with a server error."""

    default_reason = "Unavailable"


class NotReady(GraftError):
    """A resource is not Ready (yet), or is missing something it needs."""

    default_reason = "NotReady"


class Timeout(NotReady):
    """Waiting for a resource ran out of time; it may still become Ready."""

    default_reason = "Timeout"


class DatasetInvalid(GraftError):
    """The dataset's data has problems: every one kept, with its line number, is in `problems`
    and in the message."""

    default_reason = "InvalidDataset"

    def __init__(
        self,
        message: str,
        *,
        problems: list[str] | None = None,
        reason: str | None = None,
        resource: str | None = None,
    ):
        super().__init__(message, reason=reason, resource=resource)
        self.problems = list(problems or [])


class DatasetFailed(GraftError):
    """The Dataset exists but failed for a reason other than its data (its source unreadable)."""

    default_reason = "DatasetFailed"


class FineTuningJobFailed(GraftError):
    default_reason = "FineTuningJobFailed"


class UploadError(GraftError):
    """The gateway refused or lost an upload."""

    default_reason = "UploadFailed"


def _status_body(body: str | bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def field_messages(status: Mapping[str, Any]) -> list[str]:
    """The API server's per-field messages of a Status (details.causes), `field: message`."""
    out = []
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    for cause in causes or []:
        if not isinstance(cause, Mapping):
            continue
        text = str(cause.get("message") or cause.get("reason") or "")
        field = cause.get("field")
        out.append(f"{field}: {text}" if field and not text.startswith(str(field)) else text)
    return out


def translate(
    status_code: int,
    body: str | bytes | None,
    *,
    action: str,
    resource: str | None = None,
    account: str | None = None,
) -> GraftError:
    """The GraftError for an API server answer `status_code` with `body` (a Status, as JSON),
    met while doing `action` (e.g. "create Dataset accounts/a/datasets/x")."""
    status = _status_body(body)
    said = str(status.get("message") or "").strip()
    reason = str(status.get("reason") or "") or None
    if status_code == 422 or reason == "Invalid":
        fields = field_messages(status)
        listing = "\n".join(f"- {f}" for f in fields) if fields else said
        return InvalidSpec(
            f"the API server refused to {action}:\n{listing}\nfix these fields and try again",
            reason=reason or "Invalid",
            resource=resource,
        )
    if status_code == 403:
        where = f" in account {account!r}" if account else ""
        return Forbidden(
            f"your credentials may not {action}{where} ({said or 'forbidden'}); the SDK needs "
            f"the account's member role: ask an admin of the account to create a Graft User "
            f"for you with role member (ClusterRole {cluster_role_name('member')} bound in the "
            f"account's namespace), or use a kubeconfig whose user has it",
            reason=reason or "Forbidden",
            resource=resource,
        )
    if status_code == 401:
        return Unauthorized(
            f"the API server did not accept your credentials while trying to {action}: "
            "refresh your kubeconfig's token or certificate",
            reason=reason or "Unauthorized",
            resource=resource,
        )
    if status_code == 404:
        return NotFound(
            f"not found while trying to {action}" + (f": {said}" if said else ""),
            reason=reason or "NotFound",
            resource=resource,
        )
    if status_code == 409:
        return Conflict(
            f"conflict while trying to {action}: {said or 'the object changed'}; run it again",
            reason=reason or "Conflict",
            resource=resource,
        )
    if status_code == 0 or status_code >= 500:
        return Unavailable(
            f"the API server could not {action}: {said or f'status {status_code}'}; "
            "check that the cluster is reachable and try again",
            reason=reason or "Unavailable",
            resource=resource,
        )
    return GraftError(
        f"the API server refused to {action} (status {status_code}): {said or 'no detail'}",
        reason=reason or f"Status{status_code}",
        resource=resource,
    )


def gateway_error(status_code: int, body: bytes | str, *, action: str) -> GraftError:
    """The GraftError of an OpenAI-shaped error answer of the gateway."""
    message = ""
    code = ""
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            code = str(error.get("code") or error.get("type") or "")
    except (ValueError, UnicodeDecodeError):
        message = (body.decode(errors="replace") if isinstance(body, bytes) else body)[:300]
    detail = message or f"status {status_code}"
    if status_code == 401:
        return Unauthorized(
            f"the gateway did not accept the API key while trying to {action}: {detail}; set "
            "GRAFT_API_KEY (or api_key=) to a key of this account",
            reason=code or "Unauthorized",
        )
    if status_code == 403:
        return Forbidden(
            f"the gateway refused to {action}: {detail}; the API key must belong to a User of "
            "this account with the member role",
            reason=code or "Forbidden",
        )
    if status_code == 404:
        return NotFound(f"the gateway could not {action}: {detail}", reason=code or "NotFound")
    if status_code == 409:
        return Conflict(f"{action}: {detail}", reason=code or "Conflict")
    if status_code >= 500:
        return Unavailable(
            f"the gateway could not {action}: {detail}; try again", reason=code or "Unavailable"
        )
    return UploadError(f"the gateway refused to {action}: {detail}", reason=code or None)
