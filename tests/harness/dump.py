"""Real objects from the integration tests, written as Argo CD health-check fixtures.

With `GRAFT_DUMP_FIXTURES=<dir>` set, the integration tests call `dump()` (or `dump_current()`)
where an object is in a state worth a fixture: a Ready Deployment, a Failed Dataset, a
FineTuningJob that succeeded, ... Each lands in `<dir>/graft.dev/<Kind>/testdata/<name>.yaml`,
the layout of deploy/argocd/, without what differs from run to run (managedFields, uid,
resourceVersion, creationTimestamp, kubectl's and kopf's annotations), so it can be copied over
the hand-written fixture of the same name and checked with tests/unit/test_argocd_health.py:

    GRAFT_DUMP_FIXTURES=/tmp/fixtures pytest -m integration
    python3 hack/argocd-fixtures.py /tmp/fixtures   # copies them in, updates the messages

Without the variable every function here returns at once and does nothing: the tests behave
exactly as they do without this module.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness.kube import Cluster, condition, wait_for

ENV = "GRAFT_DUMP_FIXTURES"
GROUP = "graft.dev"
VOLATILE_METADATA = ("managedFields", "uid", "resourceVersion", "creationTimestamp", "selfLink")
VOLATILE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
# kopf keeps its progress and the last handled spec in graft.dev/ annotations (controller/main.py);
# the one annotation Graft itself writes is a uid (graft.dev/finetuning-job-uid).
VOLATILE_ANNOTATION_PREFIX = f"{GROUP}/"


def fixtures_dir() -> Path | None:
    """Where fixtures go, or None when dumping is off."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what changes from one run to the next."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for key in VOLATILE_METADATA:
        meta.pop(key, None)
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k not in VOLATILE_ANNOTATIONS and not k.startswith(VOLATILE_ANNOTATION_PREFIX)
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    for ref in meta.get("ownerReferences") or []:
        ref.pop("uid", None)
    return out


def render(obj: dict[str, Any], source: str = "") -> str:
    head = "# Dumped from a real object by tests/harness/dump.py"
    head += f" ({source})\n" if source else "\n"
    return head + yaml.safe_dump(strip(obj), sort_keys=False, width=100)


def dump(obj: dict[str, Any] | None, name: str) -> Path | None:
    """Write `obj` as the fixture `name` of its kind; nothing when dumping is off."""
    root = fixtures_dir()
    if root is None or obj is None:
        return None
    path = root / GROUP / obj["kind"] / "testdata" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    path.write_text(render(obj, test))
    return path


def reconciled(obj: dict[str, Any] | None) -> bool:
    """The operator has written a status for the object's current generation."""
    if not obj or not condition(obj, "Ready"):
        return False
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"].get("generation"))


def kebab(reason: str) -> str:
    """A condition reason as a fixture name: TooManyAddons -> too-many-addons."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in reason).lstrip("-")


def dump_current(
    cluster: Cluster,
    resource: str,
    name: str,
    namespace: str | None,
    fixture: str,
    *,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 30,
) -> Path | None:
    """Read the object once its status is current (and `until` holds), then `dump()` it; when
    dumping is off, return at once without reading anything."""
    if fixtures_dir() is None:
        return None

    def probe() -> dict[str, Any] | None:
        obj = cluster.get(resource, name, namespace)
        ok = obj is not None and reconciled(obj) and (until is None or until(obj))
        return obj if ok else None

    return dump(wait_for(f"{resource}/{name} to dump as {fixture}", probe, timeout), fixture)
