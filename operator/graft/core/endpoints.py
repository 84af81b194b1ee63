"""Addresses the operator and the gateway serve on, given as URLs on the command line
(`--metrics http://0.0.0.0:9090/metrics`, `--listen http://0.0.0.0:8080`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

OFF = ("", "none")
"""Values that turn an optional server off."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str


def parse_endpoint(url: str, *, flag: str, example: str, optional: bool = True) -> Endpoint | None:
    """http://<host>:<port><path>, or None when optional and it is "" or "none" (no server).
    ValueError says what is wrong with it, naming the flag."""
    if optional and url.strip().lower() in OFF:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        hint = ", or '' to serve none" if optional else ""
        raise ValueError(
            f"{flag} {url!r}: expected http://<address>:<port>/<path>, e.g. {example}{hint}"
        )
    return Endpoint(host=parts.hostname, port=port, path=parts.path or "/")
