"""The Python SDK (graft.sdk) on a real API server, as a member of an account, never as admin.

A script in the hosted platform's style runs as its own process with a kubeconfig whose user
impersonates alice, a Graft User with role member (the API server authorizes it exactly as
alice's own token: only the ClusterRole graft-member bound in her account), and her API key for
the gateway. The session's operator, gateway, the kubelet stand-in (Job pods: validation,
inspection, training with the tiny model) and PodServers (model-server pods: `graft serve`) do
the rest for real.

What is checked is what the hosted platform's SDK promises: running the same script twice
creates each resource once; a changed file (content or name) makes a new Dataset; a new job
name trains again; an invalid file fails locally, with line numbers, and creates nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.kube import ROOT, Cluster, GatewayProcess, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn
from harness.podservers import PodServers

pytestmark = pytest.mark.dataplane

GROUP = "graft.dev/v1alpha1"
HYPERPARAMETERS = "max_steps=2, batch_size=4, learning_rate=0.01, lora_rank=4, lora_alpha=8, max_context_length=128, seed=3"


def obj(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": GROUP, "kind": kind, "metadata": meta, "spec": spec}


def ready(cluster: Cluster, kind: str, name: str, ns: str | None = None) -> dict[str, Any] | None:
    found = cluster.get(kind, name, ns)
    c = condition(found, "Ready")
    return found if c and c["status"] == "True" else None


def chat_lines(n: int, answer: str = "alpha alpha") -> str:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i + 1}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        + "\n"
        for i in range(n)
    )


@dataclass
class World:
    cluster: Cluster
    gateway: GatewayProcess
    account: str
    kubeconfig: str
    api_key: str
    work: Path

    def run(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Python script as alice: her kubeconfig, her account, her API key."""
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "GRAFT_GATEWAY_URL": self.gateway.url,
            "GRAFT_API_KEY": self.api_key,
            "PYTHONPATH": str(ROOT / "operator"),
        }
        env.pop("GRAFT_ACCOUNT", None)  # the account comes from the kubeconfig's context
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.work,
            timeout=900,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"the SDK script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def names(self, kind: str, selector: str | None = None) -> list[str]:
        return sorted(
            o["metadata"]["name"] for o in self.cluster.list(kind, self.account, selector)
        )


def member_kubeconfig(admin: Cluster, who: str, account: str, path: Path) -> str:
    """The admin's kubeconfig, impersonating `who` (as `kubectl --as` does), in `account`."""
    config = yaml.safe_load(Path(admin.kubeconfig).read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    admin_user = next(u for u in config["users"] if u["name"] == current["context"]["user"])
    config["users"] = [{"name": who, "user": {**admin_user["user"], "as": who}}]
    config["contexts"] = [
        {
            "name": who,
            "context": {
                "cluster": current["context"]["cluster"],
                "user": who,
                "namespace": account,
            },
        }
    ]
    config["current-context"] = who
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def world(
    operator: OperatorProcess, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    from graft.dataplane.smallmodels import build_tiny_model

    cluster = operator.cluster
    root = tmp_path_factory.mktemp("sdk-world")
    base = build_tiny_model(root / "base")
    account = f"sdk-{uuid.uuid4().hex[:6]}"
    alice = f"alice@{account}.example.com"
    cluster.apply(obj("Account", account, None, {}))
    wait_for(f"Account {account}", lambda: ready(cluster, "accounts.graft.dev", account), 90)
    with ExitStack() as stack:
        (root / "pods").mkdir()
        stack.enter_context(
            PodServers(cluster, account, "app.kubernetes.io/component=model-server", root / "pods")
        )
        kubelet = KubeletStandIn(cluster.kubeconfig, account, root / "kubelet").start()
        stack.callback(kubelet.stop)
        cluster.apply(
            [
                obj("User", "alice", account, {"email": alice, "role": "member"}),
                obj("ApiKey", "alice-key", account, {"user": "alice"}),
                obj(
                    "Model", "tiny", account, {"kind": "Base", "source": {"uri": f"file://{base}"}}
                ),
            ]
        )
        key = wait_for(
            "alice's ApiKey", lambda: ready(cluster, "apikeys.graft.dev", "alice-key", account), 60
        )
        secret = cluster.get("secret", key["status"]["secretName"], account)
        assert secret is not None
        wait_for("alice's RoleBinding", lambda: ready(cluster, "users.graft.dev", "alice", account))
        work = root / "work"
        work.mkdir()
        yield World(
            cluster,
            gateway,
            account,
            member_kubeconfig(cluster, alice, account, root / "alice.kubeconfig"),
            base64.b64decode(secret["data"]["apiKey"]).decode(),
            work,
        )
        cluster.kubectl(
            "patch", "accounts.graft.dev", account, "--type=merge",
            "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "accounts.graft.dev", account, "--wait=false", check=False)


def test_the_script_runs_as_a_member_not_as_admin(world: World) -> None:
    """The kubeconfig really is alice's: what her role lacks is refused, with the role named."""
    proc = world.run(
        "from graft.sdk import Connection, Forbidden\n"
        "conn = Connection()\n"
        "print(conn.account)\n"
        "try:\n"
        "    conn.create('users', {'metadata': {'name': 'eve'}, 'spec': {'email': 'e@x.io', "
        "'role': 'admin'}})\n"
        "except Forbidden as e:\n"
        "    print('FORBIDDEN', e)\n"
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == world.account
    assert lines[1].startswith("FORBIDDEN")
    assert "member role" in lines[1]
    assert world.names("users.graft.dev") == ["alice"]


SCRIPT = """
import sys
from graft.sdk import LLM, Dataset

llm = LLM(model="tiny", id="sdk-chat", deployment_type="on-demand", engine="Reference").apply()
llm.wait_ready(timeout=300)
dataset = Dataset.from_file(sys.argv[1] if len(sys.argv) > 1 else "train.jsonl")
job = llm.create_supervised_fine_tuning_job(
    "{name}", dataset, epochs=1, {hyperparameters}
)
job.wait(timeout=600)
tuned = job.output_llm.apply().wait_ready(timeout=300)
answer = tuned.chat.completions.create(
    messages=[{{"role": "user", "content": "What is 1 plus 2?"}}], max_tokens=4
)
print("JOB", job.id, "DATASET", dataset.id, "MODEL", tuned.model)
print("ANSWER", type(answer).__name__, answer.model)
"""


def test_the_same_script_twice_creates_each_resource_once(world: World) -> None:
    (world.work / "train.jsonl").write_text(chat_lines(8))
    script = SCRIPT.format(name="first-job", hyperparameters=HYPERPARAMETERS)
    first = world.run(script)
    # .wait() printed the job's phases and its status.progress (plain lines: no TTY); the last
    # one carries the trainer's final figures, which the gateway and the operator wrote.
    done = re.search(r"first-job: Succeeded  step (\d+)/(\d+)  epoch \S+  loss \d", first.stderr)
    assert done is not None, first.stderr
    assert done.group(1) == done.group(2) == "2"
    counts = {
        kind: world.names(kind)
        for kind in (
            "deployments.graft.dev",
            "datasets.graft.dev",
            "finetuningjobs.graft.dev",
            "models.graft.dev",
            "deployedmodels.graft.dev",
        )
    }
    trainers = world.names("jobs.batch", "app.kubernetes.io/component=trainer")
    configmaps = world.names("configmaps", "app.kubernetes.io/managed-by=graft-sdk")
    assert counts["deployments.graft.dev"] == ["sdk-chat"]
    assert counts["datasets.graft.dev"] == ["train"]
    assert counts["finetuningjobs.graft.dev"] == ["first-job"]
    assert counts["models.graft.dev"] == ["first-job", "tiny"]
    assert counts["deployedmodels.graft.dev"] == ["first-job-sdk-chat"]
    assert len(trainers) == 1
    assert configmaps == ["train"]
    answer = [line for line in first.stdout.splitlines() if line.startswith("ANSWER")]
    assert answer == [f"ANSWER ChatCompletion accounts/{world.account}/models/first-job"]

    # The dataset's ConfigMap goes with the Dataset (owned by it).
    cm = world.cluster.get("configmap", "train", world.account)
    assert cm is not None
    assert [o["kind"] for o in cm["metadata"]["ownerReferences"]] == ["Dataset"]

    second = world.run(script)
    assert second.stdout.splitlines()[-2] == first.stdout.splitlines()[-2]
    for kind, names in counts.items():
        assert world.names(kind) == names, kind
    assert world.names("jobs.batch", "app.kubernetes.io/component=trainer") == trainers
    assert world.names("configmaps", "app.kubernetes.io/managed-by=graft-sdk") == configmaps


def test_a_changed_file_makes_a_new_dataset_and_a_new_name_trains_again(world: World) -> None:
    (world.work / "train.jsonl").write_text(chat_lines(8))
    datasets_before = world.names("datasets.graft.dev")
    sync = (
        "import sys\nfrom graft.sdk import Dataset\n"
        "d = Dataset.from_file(sys.argv[1]).sync(timeout=300)\nprint(d.id)\n"
    )

    def dataset_of(path: Path) -> str:
        return world.run(sync.replace("sys.argv[1]", repr(str(path)))).stdout.split()[-1]

    same = dataset_of(world.work / "train.jsonl")
    (world.work / "changed").mkdir(exist_ok=True)
    (world.work / "changed" / "train.jsonl").write_text(chat_lines(9))
    changed = dataset_of(world.work / "changed" / "train.jsonl")
    (world.work / "renamed.jsonl").write_text(chat_lines(8))
    renamed = dataset_of(world.work / "renamed.jsonl")
    assert changed.startswith("train-")  # the ID was taken by other data: a hash suffix
    assert renamed == "renamed"
    assert same == "train"
    assert len({same, changed, renamed}) == 3
    assert set(world.names("datasets.graft.dev")) == {*datasets_before, same, changed, renamed}

    trainers = world.names("jobs.batch", "app.kubernetes.io/component=trainer")
    job = (
        "from graft.sdk import SupervisedFineTuningJob\n"
        f"j = SupervisedFineTuningJob(name='second-job', model='tiny', dataset='{same}', "
        f"epochs=1, {HYPERPARAMETERS}).sync()\n"
        "j.wait(timeout=600)\nprint(j.id, j.output_model)\n"
    )
    out = world.run(job).stdout.split()
    assert out[-2:] == ["second-job", f"accounts/{world.account}/models/second-job"]
    after = world.names("jobs.batch", "app.kubernetes.io/component=trainer")
    assert len(after) == len(trainers) + 1


def test_an_invalid_file_fails_locally_with_line_numbers_and_creates_nothing(
    world: World,
) -> None:
    bad = world.work / "bad.jsonl"
    bad.write_text(chat_lines(2) + "{oops\n" + '{"messages": []}\n')
    before = (world.names("datasets.graft.dev"), world.names("configmaps"))
    proc = world.run(
        "from graft.sdk import Dataset, DatasetInvalid\n"
        "try:\n"
        "    Dataset.from_file('bad.jsonl').sync()\n"
        "except DatasetInvalid as e:\n"
        "    print(e)\n"
        "    print(e.problems)\n"
    )
    assert "2 problems in bad.jsonl:" in proc.stdout
    assert "line 3: malformed JSON" in proc.stdout
    assert 'line 4: "messages" is empty' in proc.stdout
    assert (world.names("datasets.graft.dev"), world.names("configmaps")) == before


def test_the_cli_lists_with_full_names(world: World) -> None:
    proc = world.run(
        "import sys\nfrom graft.cli import main\nsys.exit(main(['get', 'models', '-o', 'json']))\n"
    )
    names = {m["metadata"]["name"] for m in json.loads(proc.stdout)["items"]}
    assert "tiny" in names
    table = world.run(
        "import sys\nfrom graft.cli import main\nsys.exit(main(['get', 'models']))\n"
    ).stdout
    assert f"accounts/{world.account}/models/tiny" in table

    (world.work / "cli.jsonl").write_text(chat_lines(3))
    cli = "import sys\nfrom graft.cli import main\nsys.exit(main({args!r}))\n"
    made = world.run(
        cli.format(args=["create", "dataset", "cli-data", "--file", "cli.jsonl", "-o", "json"])
    )
    status = json.loads(made.stdout)["status"]
    assert (status["exampleCount"], status["filename"]) == (3, "cli.jsonl")
    again = world.run(cli.format(args=["create", "dataset", "cli-data", "--file", "cli.jsonl"]))
    assert f"accounts/{world.account}/datasets/cli-data" in again.stdout
    (world.work / "cli.jsonl").write_text(chat_lines(4))
    taken = world.run(
        cli.format(args=["create", "dataset", "cli-data", "--file", "cli.jsonl"]), check=False
    )
    assert taken.returncode == 1
    assert "already exists with other data" in taken.stderr


def test_shared_llms_scale_unload_and_delete(world: World) -> None:
    """After the script: a "shared" LLM of the trained addon re-uses the DeployedModel in the
    Deployment that serves its base; a shared LLM of a base nobody serves says what is missing;
    the CLI unloads and loads the addon; scale() goes through /scale; delete() removes what
    apply() made, as a member."""
    assert "sdk-chat" in world.names("deployments.graft.dev")
    shared = world.run(
        "from graft.sdk import LLM, NotReady\n"
        "tuned = LLM('first-job', deployment_type='shared').apply()\n"
        "print('SHARED', tuned.deployment)\n"
        "try:\n"
        "    LLM('accounts/nobody/models/base', deployment_type='shared').apply()\n"
        "except NotReady as e:\n"
        "    print('MISSING', e)\n"
    ).stdout.splitlines()
    assert shared[0] == "SHARED sdk-chat"
    assert shared[1].startswith("MISSING")
    assert "no Deployment in account" in shared[1]
    assert world.names("deployedmodels.graft.dev") == ["first-job-sdk-chat"]

    cli = "import sys\nfrom graft.cli import main\nsys.exit(main({args!r}))\n"
    unloaded = world.run(cli.format(args=["unload-lora", "first-job", "--deployment", "sdk-chat"]))
    assert f"accounts/{world.account}/deployedmodels/first-job-sdk-chat deleted" in unloaded.stdout
    wait_for(
        "the DeployedModel gone",
        lambda: world.names("deployedmodels.graft.dev") == [] or None,
        60,
    )
    loaded = world.run(
        cli.format(args=["load-lora", "first-job", "--deployment", "sdk-chat", "-o", "json"])
    )
    assert json.loads(loaded.stdout)["spec"] == {"model": "first-job", "deployment": "sdk-chat"}
    refused = world.run(
        cli.format(args=["load-lora", "tiny", "--deployment", "sdk-chat"]), check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "is a Base model" in refused.stderr

    world.run(
        "from graft.sdk import LLM\nLLM('tiny', id='sdk-chat', engine='Reference').scale(0)\n"
    )
    deployment = world.cluster.get("deployments.graft.dev", "sdk-chat", world.account)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    world.run(
        "from graft.sdk import LLM\nLLM('first-job', id='sdk-chat', engine='Reference').delete()\n"
    )
    wait_for(
        "the Deployment and its DeployedModel gone",
        lambda: (
            (
                world.names("deployments.graft.dev") == []
                and world.names("deployedmodels.graft.dev") == []
            )
            or None
        ),
        120,
    )


def test_a_file_too_big_for_a_configmap_is_uploaded_through_the_gateway(world: World) -> None:
    """Above 900 KiB the SDK uploads through the session gateway (into its file:// store) and
    the Dataset names the uploaded file; the operator's validation agrees on the sha256."""
    data = chat_lines(9000)
    assert len(data) > 1024 * 1024
    (world.work / "big.jsonl").write_text(data)
    out = world.run(
        "from graft.sdk import Dataset\n"
        "d = Dataset.from_file('big.jsonl').sync(timeout=300)\nprint(d.id)\n"
    ).stdout.split()
    dataset = world.cluster.get("datasets.graft.dev", out[-1], world.account)
    assert dataset is not None
    sha = hashlib.sha256(data.encode()).hexdigest()
    uri = dataset["spec"]["source"]["uri"]
    assert uri.startswith("file://"), uri
    assert uri.endswith(f"/{world.account}/datasets/{sha}/big.jsonl"), uri
    assert dataset["status"]["sha256"] == sha
    assert world.names("configmaps", "app.kubernetes.io/managed-by=graft-sdk").count("big") == 0


def readme_script() -> str:
    """The Python block of the README's SDK section, exactly as a reader copies it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The Python SDK and the CLI", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def gateway_counts(world: World, model: str) -> dict[str, float]:
    """The gateway's own figures for `model`: answers with 200, and completion tokens."""
    counts = {"200": 0.0, "out": 0.0}
    for family in text_string_to_metric_families(world.gateway.metrics()):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or not sample.name.endswith("_total"):
                continue
            if sample.name == "graft_gateway_requests_total" and labels.get("code") == "200":
                counts["200"] += sample.value
            if sample.name == "graft_gateway_tokens_total" and labels.get("direction") == "out":
                counts["out"] += sample.value
    return counts


def test_the_readmes_script_runs_as_written(world: World) -> None:
    """The README's script, verbatim, as alice. Its base model is the README's name for the
    base model (examples/quickstart.yaml's); here that Model holds the tiny test model, so the
    test checks the script and the SDK, not SmolLM2's answers."""
    from graft.dataplane.smallmodels import build_tiny_model

    script = readme_script()
    base = build_tiny_model(world.work / "readme-base")
    world.cluster.apply(
        obj(
            "Model",
            "smollm2-135m",
            world.account,
            {"kind": "Base", "source": {"uri": f"file://{base}"}},
        )
    )
    (world.work / "train.jsonl").write_text(chat_lines(8))
    addon = f"accounts/{world.account}/models/my-job"
    before = gateway_counts(world, addon)
    proc = world.run(script)
    assert re.search(r"my-job: Succeeded  step \d+/\d+", proc.stderr), proc.stderr
    # What the tiny random model says is noise (whitespace, even nothing at all), so the test
    # checks what the gateway saw: one chat answered by the addon, with tokens out, and printed.
    after = gateway_counts(world, addon)
    assert after["200"] - before["200"] == 1, (before, after)
    assert after["out"] > before["out"], (before, after)
    assert proc.stdout.endswith("\n"), proc.stdout
    assert world.cluster.get("deployments.graft.dev", "my-deployment", world.account)
    dm = world.names("deployedmodels.graft.dev")
    assert "my-job-my-deployment" in dm, dm
