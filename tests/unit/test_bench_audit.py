"""What bench/operatorscale.py counts rests on two small pieces: the local control plane's
opt-in audit log (hack/localcluster) and the reader that follows it. Both on real files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "hack", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from localcluster.components import AUDIT_ENV, component_argv  # noqa: E402
from localcluster.state import Layout  # noqa: E402
from operatorscale import Audit  # noqa: E402

PORTS = {
    "etcd": 1,
    "etcd-peer": 2,
    "kube-apiserver": 3,
    "kube-controller-manager": 4,
    "kube-scheduler": 5,
    "kwok": 6,
}


def apiserver_argv(root: Path) -> list[str]:
    argv: list[str] = component_argv("kube-apiserver", root / "bin", Layout(root), PORTS)
    return argv


def test_no_audit_log_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUDIT_ENV, raising=False)
    argv = apiserver_argv(tmp_path)
    assert not [a for a in argv if a.startswith("--audit")]
    assert not (tmp_path / "audit-policy.yaml").exists()


def test_audit_log_when_asked_and_kept_by_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUDIT_ENV, "1")
    argv = apiserver_argv(tmp_path)
    assert f"--audit-log-path={tmp_path / 'audit.log'}" in argv
    assert f"--audit-policy-file={tmp_path / 'audit-policy.yaml'}" in argv
    assert "kind: Policy" in (tmp_path / "audit-policy.yaml").read_text()
    # `localcluster restart kube-apiserver` from a shell without the variable keeps the log.
    monkeypatch.delenv(AUDIT_ENV)
    assert apiserver_argv(tmp_path) == argv


def event(audit_id: str, stage: str, verb: str, name: str, at: str) -> dict[str, Any]:
    return {
        "auditID": audit_id,
        "stage": stage,
        "verb": verb,
        "user": {"username": "system:serviceaccount:graft-system:graft-operator"},
        "objectRef": {"resource": "deployments", "namespace": "a", "name": name},
        "requestReceivedTimestamp": at,
    }


def test_audit_reader_counts_each_request_once_and_waits_for_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        json.dumps(event("old", "ResponseComplete", "get", "x", "2026-01-01T00:00:00Z")) + "\n"
    )
    audit = Audit(log)  # starts at the end: what came before is not the benchmark's
    watch_start = event("w", "ResponseStarted", "watch", "", "2026-01-01T00:00:01.5Z")
    watch_end = {**watch_start, "stage": "ResponseComplete"}
    patch = json.dumps(event("p", "ResponseComplete", "patch", "d1", "2026-01-01T00:00:02Z"))
    with log.open("a") as f:
        f.write(json.dumps(watch_start) + "\n" + json.dumps(watch_end) + "\n" + patch[:20])
    audit.poll()
    assert [(r.verb, r.name) for r in audit.requests] == [("watch", "")]
    with log.open("a") as f:
        f.write(patch[20:] + "\n")
    user = "system:serviceaccount:graft-system:graft-operator"
    requests = audit.by(user, 0)
    assert [(r.verb, r.resource, r.name) for r in requests] == [
        ("watch", "deployments", ""),
        ("patch", "deployments", "d1"),
    ]
    assert requests[1].at - requests[0].at == pytest.approx(0.5)
    assert audit.by("someone-else", 0) == []
