"""Where the local node keeps its state: pure, so that tests and `hack/localcluster down`
(which reads the pid file with the standard library) agree with it.

    <cache>/localnode/localnode.pid                    the running `graft localnode`
    <cache>/localnode/logs/<namespace>/<pod>/<container>.log   every container's output
    <cache>/localnode/pods/<namespace>/...             volumes, homes, termination messages

<cache> is $GRAFT_CACHE_DIR, else $XDG_CACHE_HOME/graft, else ~/.cache/graft (as hack/localcluster).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PID_FILE_NAME = "localnode.pid"


def root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("GRAFT_CACHE_DIR"):
        return Path(env["GRAFT_CACHE_DIR"]) / "localnode"
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "graft" / "localnode"


def pid_file(base: Path) -> Path:
    return base / PID_FILE_NAME


def logs_dir(base: Path, namespace: str) -> Path:
    return base / "logs" / namespace


def container_log(base: Path, namespace: str, pod: str, container: str) -> Path:
    """The documented place of a container's output (`graft localnode logs` prints it)."""
    return logs_dir(base, namespace) / pod / f"{container}.log"


def pods_dir(base: Path, namespace: str) -> Path:
    return base / "pods" / namespace
