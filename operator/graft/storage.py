"""Where a model-server or trainer container finds an artifact given by URI (pure).

- hf://<org>/<name>  the engine fetches it itself (passed as the Hugging Face repo id);
- pvc://<claim>/<path>  the claim is mounted read-only and the path used in place;
- file://<path>  the path is used as is (local clusters and tests, where the path exists);
- s3:// and http(s)://  need a fetching init container, which Graft does not build yet: such a
  URI is refused with a clear reason instead of producing a pod that cannot start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

MOUNT_ROOT = "/models"


class UnsupportedSource(ValueError):
    """The URI's scheme cannot be served by a pod (yet)."""


@dataclass(frozen=True)
class Location:
    """What a container needs to see an artifact: a path (or repo id), volumes and mounts."""

    path: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def locate(uri: str, *, volume_name: str = "model") -> Location:
    parsed = urlparse(uri)
    scheme = parsed.scheme
    if scheme == "hf":
        repo = (parsed.netloc + parsed.path).strip("/")
        if repo.count("/") != 1:
            raise UnsupportedSource(f"{uri!r}: expected hf://<org>/<name>")
        return Location(path=repo)
    if scheme == "file":
        if not parsed.path.startswith("/"):
            raise UnsupportedSource(f"{uri!r}: expected an absolute path, file:///<path>")
        return Location(path=parsed.path)
    if scheme == "pvc":
        claim, sub = parsed.netloc, parsed.path.strip("/")
        if not claim:
            raise UnsupportedSource(f"{uri!r}: expected pvc://<claim>/<path>")
        mount = f"{MOUNT_ROOT}/{volume_name}"
        return Location(
            path=f"{mount}/{sub}" if sub else mount,
            volumes=[
                {
                    "name": volume_name,
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                }
            ],
            mounts=[{"name": volume_name, "mountPath": mount, "readOnly": True}],
        )
    raise UnsupportedSource(
        f"{uri!r}: {scheme}:// sources cannot be served yet; use hf://, pvc:// or file://"
    )
