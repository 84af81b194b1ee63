"""Where a model-server or trainer container finds an artifact given by URI (pure).

- hf://<org>/<name>  the engine fetches it itself (passed as the Hugging Face repo id);
- pvc://<claim>/<path>  the claim is mounted read-only and the path used in place;
- file://<path>  the path is used as is (local clusters and tests, where the path exists);
- s3:// and http(s)://  need a fetching init container, which model-server pods do not have
  yet: such a URI is refused with a clear reason instead of producing a pod that cannot start.

Addons are loaded into running replicas, which cannot mount a new volume, so an addon must be
reachable from every replica as it is: file:// and hf:// as above, and pvc:// only on the
artifacts claim (where FineTuningJobs write), which Deployments with addons mount read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

MOUNT_ROOT = "/models"
ADDONS_VOLUME = "addons"
ADDONS_MOUNT = f"{MOUNT_ROOT}/{ADDONS_VOLUME}"


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


def addon_path(uri: str, artifacts_claim: str | None) -> str | None:
    """Where a model-server replica finds an addon, or None when it cannot reach it."""
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        if not artifacts_claim or parsed.netloc != artifacts_claim:
            return None
        sub = parsed.path.strip("/")
        return f"{ADDONS_MOUNT}/{sub}" if sub else ADDONS_MOUNT
    try:
        location = locate(uri)
    except UnsupportedSource:
        return None
    return None if location.volumes else location.path


def addons_claim_mount(claim: str) -> Location:
    """The artifacts claim, mounted read-only where addon_path() points."""
    return Location(
        path=ADDONS_MOUNT,
        volumes=[
            {"name": ADDONS_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        ],
        mounts=[{"name": ADDONS_VOLUME, "mountPath": ADDONS_MOUNT, "readOnly": True}],
    )
