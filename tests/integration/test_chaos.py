"""Crash safety: kill -9 the operator at random moments while it works, restart the API server
once in the middle, and check that everything converges with no duplicate or orphaned child and
no lost addon.

Twenty Deployments with an addon each (light model servers on the pods' IPs:
tests/harness/fakeservers.py; real `graft serve` processes would need 16 GB) and a FineTuningJob
that really trains (tests/harness/kubelet.py runs its Jobs) are in flight. The operator runs
with a 4-second Lease so that each restart takes over quickly. GRAFT_CHAOS_TRIALS sets the
number of kills (30).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.fakeservers import FakeModelServers
from harness.kube import ROOT, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn

# The FineTuningJob trains a tiny model for real; `make chaos` runs it (not `make test`: one
# run in three on this 2-core machine left one fake model server not serving, see the note).
pytestmark = [pytest.mark.dataplane, pytest.mark.chaos]

GROUP = "graft.dev/v1alpha1"
DEPLOYMENTS = 20
TRIALS = int(os.environ.get("GRAFT_CHAOS_TRIALS") or 30)


def obj(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def ready(found: dict[str, Any] | None) -> bool:
    return (condition(found, "Ready") or {}).get("status") == "True"


def adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def restart_apiserver() -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), "restart", "kube-apiserver"],
        check=True,
        capture_output=True,
        timeout=180,
    )


def test_kill_9_at_random_moments_converges_without_duplicates(
    operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster, ns = operator.cluster, namespace
    from graft.dataplane.smallmodels import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} plus {i + 1}?"},
                        {"role": "assistant", "content": "alpha alpha"},
                    ]
                }
            )
            for i in range(8)
        )
        + "\n"
    )
    manifests: list[dict[str, Any]] = [
        obj("Model", "base", ns, {"kind": "Base", "source": {"uri": f"file://{tiny}"}}),
        obj("Dataset", "train", ns, {"source": {"uri": f"file://{data}"}}),
        obj(
            "FineTuningJob",
            "tune",
            ns,
            {
                "baseModel": "base",
                "dataset": "train",
                "outputModel": "tuned",
                "hyperparameters": {"maxSteps": 3, "batchSize": 4, "loraRank": 4, "seed": 1},
            },
        ),
    ]
    for i in range(DEPLOYMENTS):
        manifests += [
            obj(
                "Model",
                f"a{i}",
                ns,
                {
                    "kind": "PeftAddon",
                    "baseModel": "base",
                    "source": {"uri": f"file://{adapter_dir(tmp_path, f'a{i}')}"},
                },
            ),
            obj(
                "Deployment",
                f"d{i}",
                ns,
                {"baseModel": "base", "engine": "Reference", "enableAddons": True, "maxAddons": 2},
            ),
            obj("DeployedModel", f"dm{i}", ns, {"model": f"a{i}", "deployment": f"d{i}"}),
        ]

    operator.stop()  # the session's operator makes way for one with a short Lease
    chaotic = OperatorProcess(
        cluster,
        tmp_path / "chaos.log",
        env={**operator.extra_env, "GRAFT_LEASE_SECONDS": "4"},
        kubeconfig=operator.kubeconfig,
    )
    kubelet = KubeletStandIn(cluster.kubeconfig, ns, tmp_path / "kubelet").start()
    rng = random.Random(20261128)
    started = time.monotonic()
    kills = 0
    try:
        with FakeModelServers(cluster, ns) as servers:
            chaotic.start()
            cluster.apply(manifests)
            for trial in range(TRIALS):
                time.sleep(rng.uniform(0.5, 6.0))  # somewhere in a reconcile, or between
                assert chaotic.proc is not None
                chaotic.proc.kill()  # kill -9: no clean-up, no Lease released
                chaotic.proc.wait()
                kills += 1
                if trial == TRIALS // 2:
                    restart_apiserver()
                chaotic.start()

            def converged() -> bool:
                deps = cluster.list("deployments.graft.dev", ns)
                dms = cluster.list("deployedmodels.graft.dev", ns)
                ftj = cluster.get("finetuningjobs.graft.dev", "tune", ns)
                done = (condition(ftj, "Succeeded") or {}).get("status") == "True"
                return (
                    len(deps) == DEPLOYMENTS
                    and all(ready(d) for d in deps)
                    and len(dms) == DEPLOYMENTS
                    and all(ready(d) and d["status"].get("loadedReplicas") == 1 for d in dms)
                    and done
                )

            try:
                wait_for("everything to converge after the chaos", converged, 300, interval=2)
            except AssertionError as exc:
                waiting = [
                    f"{d['metadata']['name']}: {(condition(d, 'Ready') or {}).get('message')}"
                    for d in cluster.list("deployedmodels.graft.dev", ns)
                    if not ready(d)
                ][:5]
                ftj = cluster.get("finetuningjobs.graft.dev", "tune", ns)
                raise AssertionError(
                    f"{exc}\nnot ready: {waiting}\nfine-tuning: {condition(ftj, 'Ready')}\n"
                    f"fake servers: {len(servers.servers)} running, errors {servers.errors[-5:]}\n"
                    f"operator:\n{chaotic.tail(40)}"
                ) from None
            converge_seconds = time.monotonic() - started

            # No duplicate or orphaned child.
            pods = cluster.list("pods", ns, "app.kubernetes.io/component=model-server")
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            per_deployment = Counter(p["metadata"]["labels"]["graft.dev/deployment"] for p in live)
            duplicates = {d: n for d, n in per_deployment.items() if n != 1}
            owners = {d["metadata"]["uid"] for d in cluster.list("deployments.graft.dev", ns)}
            orphans = [
                p["metadata"]["name"]
                for p in live
                if p["metadata"]["ownerReferences"][0]["uid"] not in owners
            ]
            services = cluster.list("services", ns, "app.kubernetes.io/component=model-server")
            jobs = cluster.list("jobs.batch", ns, "graft.dev/finetuning-job=tune")
            tuned = [
                m for m in cluster.list("models.graft.dev", ns) if m["metadata"]["name"] == "tuned"
            ]
            # No lost addon: every replica really serves its addon (asked over HTTP by the
            # operator, and seen here in the server's own state).
            lost = [
                p["metadata"]["name"]
                for p in live
                if f"accounts/{ns}/models/a{p['metadata']['labels']['graft.dev/deployment'][1:]}"
                not in (servers.serving(p["metadata"]["name"]) or set())
            ]
            print(
                f"\nchaos: {kills} kill -9s and 1 API-server restart in "
                f"{converge_seconds:.0f} s to convergence; {len(live)} pods, "
                f"{len(duplicates)} duplicates, {len(orphans)} orphans, "
                f"{len(lost)} lost addons, {len(jobs)} trainer Job(s)"
            )
            assert not duplicates, duplicates
            assert not orphans, orphans
            assert len(services) == DEPLOYMENTS
            assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
            assert len(tuned) == 1
            assert not lost, lost
            assert not servers.errors, servers.errors[:5]
    finally:
        chaotic.stop()
        kubelet.stop()
        operator.start()
