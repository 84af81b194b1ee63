"""An account to look at on the dashboard, without a cluster: a real Gateway on loopback whose
StaticView holds account `acme` (a Deployment `chat` with two replicas, one ready and serving the
base model and an addon, one starting; a DeployedModel; a validated Dataset; a running
FineTuningJob with a loss curve) and account `other`, with an API key for each. The unit tests and
the browser test (tests/unit/test_gateway_dashboard.py, test_dashboard_browser.py) share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from graft.gateway import apikeys
from graft.gateway.catalog import Catalog, build
from graft.gateway.server import Pod, Settings
from harness.replicas import Loop, RunningGateway, StaticView, StubReplica, api_key_object, meta

ACCOUNT = "acme"
OTHER = "other"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CURVE = [[1, 3.2], [2, 2.9], [3, 2.4], [4, 2.1], [5, 1.7], [6, 1.5]]
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-28T10:00:00Z",
    }


class DashboardWorld:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.key, self.other_key = apikeys.generate(), apikeys.generate()
        self.replica = StubReplica("chat-0", {"base", "acme-tuned"}, "key-chat")
        loop.run(self.replica.start())
        pods = [
            Pod(
                "u-chat-0",
                "chat-0",
                f"accounts/{ACCOUNT}/deployments/chat",
                "127.0.0.1",
                self.replica.port,
                True,
            ),
            Pod("u-chat-1", "chat-1", f"accounts/{ACCOUNT}/deployments/chat", None, 8000, False),
        ]
        self.view = StaticView(self.catalog(), pods, {f"{ACCOUNT}/chat": "key-chat"})
        self.view.objs = objects()
        self.gw = RunningGateway(loop, self.view, Settings(probe_interval=0.2))
        loop.run(self.gw.start())  # probes the replicas once before it returns

    def catalog(self) -> Catalog:
        return build(
            accounts=[{"metadata": meta(ACCOUNT), "spec": {}}, {"metadata": meta(OTHER)}],
            users=[
                {"metadata": meta("vera", ACCOUNT), "spec": {"role": "viewer"}},
                {"metadata": meta("olga", OTHER), "spec": {"role": "admin"}},
            ],
            api_keys=[
                api_key_object(ACCOUNT, "vera", self.key),
                api_key_object(OTHER, "olga", self.other_key),
            ],
            models=[{"metadata": meta("base", ACCOUNT), "spec": {"kind": "Base"}}],
            deployments=[
                {"metadata": meta("chat", ACCOUNT), "spec": {"baseModel": "base", "replicas": 2}}
            ],
        )

    @property
    def url(self) -> str:
        return self.gw.url

    def close(self) -> None:
        self.loop.run(self.gw.stop())
        self.loop.run(self.replica.stop())


def objects() -> dict[str, list[dict[str, Any]]]:
    """The raw objects of both accounts, as the watch cache would hold them."""
    return {
        "models": [
            {
                "metadata": meta("base", ACCOUNT),
                "spec": {"kind": "Base", "displayName": "Tiny base"},
                "status": {"conditions": [cond("Ready", "True", "Available")]},
            },
            {
                "metadata": meta("tuned", ACCOUNT),
                "spec": {"kind": "PeftAddon", "baseModel": "base", "displayName": EVIL},
                "status": {
                    "loraRank": 8,
                    "deployments": [f"accounts/{ACCOUNT}/deployments/chat"],
                    "conditions": [cond("Ready", "True", "Inspected")],
                },
            },
        ],
        "deployments": [
            {
                "metadata": meta("chat", ACCOUNT),
                "spec": {
                    "baseModel": "base",
                    "replicas": 2,
                    "engine": "vllm",
                    "enableAddons": True,
                },
                "status": {
                    "replicas": 2,
                    "readyReplicas": 1,
                    "addons": ["acme-tuned"],
                    "conditions": [cond("Ready", "True", "ReplicasReady", "1 of 2 ready")],
                },
            },
            {
                "metadata": meta("secret-dep", OTHER),
                "spec": {"baseModel": "base", "replicas": 1},
                "status": {"conditions": [cond("Ready", "True", "ReplicasReady")]},
            },
        ],
        "deployedmodels": [
            {
                "metadata": meta("tuned-on-chat", ACCOUNT),
                "spec": {"model": "tuned", "deployment": f"accounts/{ACCOUNT}/deployments/chat"},
                "status": {
                    "servedName": "acme-tuned",
                    "loadedReplicas": 1,
                    "conditions": [cond("Ready", "True", "Loaded")],
                },
            }
        ],
        "datasets": [
            {
                "metadata": meta("support-chats", ACCOUNT),
                "spec": {"format": "chat", "filename": "support.jsonl"},
                "status": {
                    "sha256": SHA,
                    "filename": "support.jsonl",
                    "sizeBytes": 1234,
                    "exampleCount": 40,
                    "conditions": [cond("Ready", "True", "Validated")],
                },
            }
        ],
        "finetuningjobs": [
            {
                "metadata": meta("tune-support", ACCOUNT, uid="j1"),
                "spec": {
                    "baseModel": "base",
                    "dataset": "support-chats",
                    "outputModel": "tuned",
                    "deployment": "chat",
                },
                "status": {
                    "progress": {
                        "step": 6,
                        "totalSteps": 20,
                        "epoch": 1,
                        "totalEpochs": 2,
                        "loss": 1.5,
                        "etaSeconds": 42,
                        "lossCurve": CURVE,
                        "updatedAt": "2026-11-28T10:01:00Z",
                    },
                    "conditions": [
                        cond("Ready", "False", "Training", "step 6 of 20"),
                        cond("Succeeded", "False", "Training"),
                    ],
                },
            },
            {
                "metadata": meta("evil", ACCOUNT, uid="j2"),
                "spec": {"baseModel": EVIL, "dataset": EVIL, "outputModel": EVIL},
                "status": {"conditions": [cond("Ready", "False", EVIL, EVIL)]},
            },
        ],
    }


@contextmanager
def running_world() -> Iterator[DashboardWorld]:
    """A DashboardWorld on a loop of its own, closed after."""
    loop = Loop()
    world = DashboardWorld(loop)
    try:
        yield world
    finally:
        world.close()
        loop.close()
