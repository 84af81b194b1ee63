"""The container termination message: how Graft's Job entrypoints report back to the operator.

Kubernetes copies the file at a container's `terminationMessagePath` (by default
/dev/termination-log, which the kubelet creates in every container) into
`status.containerStatuses[].state.terminated.message` when the container exits, keeping at most
4096 bytes. `graft dataset validate`, `graft fetch` and `graft train` write one line there: a
compact JSON result on success, the reason on failure; only `graft train` on a malformed dataset
writes several, one problem a line, as many whole ones as fit (graft.api.reports.describe_problems).

The path is, in order: an explicit flag, `$GRAFT_TERMINATION_MESSAGE_PATH`, or the Kubernetes
default when that file exists (outside a container nothing is written under /dev).

Standard library only (and Graft's own wire contracts and settings names).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from graft.api.reports import TERMINATION_MESSAGE_LIMIT, clip
from graft.core.settings import TERMINATION_MESSAGE_PATH_ENV

DEFAULT_PATH = "/dev/termination-log"
ENV = TERMINATION_MESSAGE_PATH_ENV
LIMIT = TERMINATION_MESSAGE_LIMIT


def message_path(flag: str | None = None) -> str | None:
    explicit = flag or os.environ.get(ENV)
    if explicit:
        return explicit
    if os.path.isfile(DEFAULT_PATH):
        return DEFAULT_PATH
    return None


def write(path: str | None, message: str) -> None:
    """Write the message (clipped to the limit); a failure to write is reported, not raised."""
    if path is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(clip(message))
    except OSError as exc:
        print(f"warning: cannot write termination message to {path}: {exc}", file=sys.stderr)


def add_argument(parser: argparse.ArgumentParser, what: str = "result") -> None:
    """`--termination-message-path`, for an entrypoint that reports through it."""
    parser.add_argument(
        "--termination-message-path",
        default=None,
        help=f"where to write the {what} (default: ${ENV}, or {DEFAULT_PATH} when it exists)",
    )


def report(path: str | None, message: str, error: str | None = None) -> None:
    """An entrypoint's outcome: `message` to stdout and the termination message, and `error`
    (why it is not a success, if it is not) to stderr."""
    print(message, flush=True)
    if error is not None:
        print(f"error: {error}", file=sys.stderr, flush=True)
    write(path, message)


class UsageParser(argparse.ArgumentParser):
    """Exits 2 on a bad command line (a Job's podFailurePolicy fails the Job at once on it)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")
