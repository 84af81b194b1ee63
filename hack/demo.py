#!/usr/bin/env python3
"""`make demo`: Graft on the local control plane (or the cluster $KUBECONFIG names).

    demo.py up     install the CRDs; start the operator, the gateway and the local node in the
                   background; apply examples/ (its vLLM Deployment's pods stay kwok fakes);
                   then for real, on this CPU: SmolLM2-135M-Instruct as a Base Model, a
                   Reference Deployment of 1 replica, the Dataset of examples/training/, a
                   FineTuningJob whose addon is loaded into the running replica, one chat
                   through the gateway with the base and one with the addon, side by side;
                   `kubectl get graft -A`
    demo.py stop   stop the operator, the gateway and the local node started by `up`

Without KUBECONFIG it starts the local control plane (hack/localcluster); stop that with
`make cluster-down` (it stops the local node too). The operator and the gateway run here as
processes (`graft run`, `graft gateway`), as they would in their pods; `graft localnode` runs the
pods of Graft's runtime image (model servers, Jobs) as processes. Running `up` again re-uses
everything (no second training). State, pid files and logs: <cache>/demo/.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get("GRAFT_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graft"
)
STATE = CACHE / "demo"
PID_FILE = STATE / "operator.pid"
LOG_FILE = STATE / "operator.log"
NAMESPACE = "demo"
LIVENESS_PORT = int(os.environ.get("GRAFT_DEMO_LIVENESS_PORT", "28080"))
# Not the operator's default 9090: a local Prometheus listens there.
METRICS_PORT = int(os.environ.get("GRAFT_DEMO_METRICS_PORT", "29090"))
GATEWAY_PORT = int(os.environ.get("GRAFT_DEMO_GATEWAY_PORT", "28000"))
GATEWAY_METRICS_PORT = int(os.environ.get("GRAFT_DEMO_GATEWAY_METRICS_PORT", "29091"))
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
ARTIFACTS = STATE / "artifacts"
UPLOADS = STATE / "uploads"
# The local node keeps its own pid file where `hack/localcluster down` looks (graft.localnode.paths).
LOCAL_NODE_PID_FILE = CACHE / "localnode" / "localnode.pid"

# What the demo trains and serves for real (names distinct from examples/quickstart.yaml's).
BASE = "smollm2-local"
DEPLOYMENT = "local-chat"
DATASET = "greetings"  # examples/training/dataset.yaml
JOB = "pirate-local"
ADDON = "pirate-local"
SYSTEM = "Answer like a pirate."
QUESTION = "Hello!"
STARTED = time.monotonic()


def say(msg: str) -> None:
    print(f"==> [{time.monotonic() - STARTED:6.1f}s] {msg}", flush=True)


def kubeconfig() -> str:
    configured = os.environ.get("KUBECONFIG")
    if configured:
        say(f"using the cluster in KUBECONFIG={configured}")
        return configured
    say("no KUBECONFIG: starting the local control plane (first run builds it from Go modules)")
    running = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), "kubeconfig"],
        capture_output=True,
        check=False,
    )
    if running.returncode != 0:
        forget_artifacts()
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), "up"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def forget_artifacts() -> None:
    """A new local cluster starts empty (`make cluster-down` removed the last one's etcd): the
    artifacts and uploads its objects pointed at go with it, or a FineTuningJob of the same name
    would find its old output and refuse to overwrite it."""
    for place in (ARTIFACTS, UPLOADS):
        if place.exists():
            say(f"a new cluster: removing the last one's {place.name} ({place})")
            shutil.rmtree(place)


def kubectl_binary() -> str:
    built = Path(os.environ.get("GRAFT_BIN_DIR") or CACHE / "bin") / "kubectl"
    return str(built) if built.exists() else "kubectl"


def kubectl(
    config: str, *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [kubectl_binary(), *args],
        env={**os.environ, "KUBECONFIG": config},
        text=True,
        capture_output=True,
        check=False,
        input=input,
    )
    if check and proc.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def apply(config: str, source: str, input: str | None = None) -> None:
    """kubectl apply, server-side, as Graft's field manager (`source` "-" reads `input`)."""
    kubectl(
        config,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=graft",
        "-f",
        source,
        input=input,
    )


def operator_identity(config: str) -> str:
    """Install Graft's shipped RBAC and return a kubeconfig with the operator's ServiceAccount
    token, so the demo's operator has exactly the permissions it has in production."""
    import yaml

    from graft.gen import rbac

    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": rbac.OPERATOR_NAMESPACE},
    }
    manifests = yaml.safe_dump_all([namespace, *rbac.manifests()])
    apply(config, "-", input=manifests)
    token = kubectl(
        config,
        "create",
        "token",
        rbac.OPERATOR_NAME,
        "-n",
        rbac.OPERATOR_NAMESPACE,
        "--duration=24h",
    ).stdout.strip()
    admin = yaml.safe_load(Path(config).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    identity = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": rbac.OPERATOR_NAME, "user": {"token": token}}],
        "contexts": [
            {"name": "graft", "context": {"cluster": cluster["name"], "user": rbac.OPERATOR_NAME}}
        ],
        "current-context": "graft",
    }
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(identity))
    path.chmod(0o600)
    return str(path)


def pid_of(name: str) -> int | None:
    """The pid of the demo's background process `name` when it is alive."""
    try:
        pid = int((STATE / f"{name}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_background(
    name: str, args: list[str], env: dict[str, str], ready_url: str | None, timeout: float = 90
) -> None:
    """Start `graft <args>` in its own session, its pid in <state>/<name>.pid and its output in
    <state>/<name>.log; wait until `ready_url` answers (or, without one, that it keeps running)."""
    log_file = STATE / f"{name}.log"
    if (pid := pid_of(name)) is not None:
        say(f"the {name} is already running (pid {pid}, log {log_file})")
        return
    STATE.mkdir(parents=True, exist_ok=True)
    graft = Path(sys.executable).with_name("graft")
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [str(graft), *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (STATE / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + (timeout if ready_url else 3)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the {name} exited with {proc.returncode}; see {log_file}")
        if ready_url:
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    break
            except OSError:
                pass
        time.sleep(0.5)
    else:
        if ready_url:
            sys.exit(f"the {name} did not answer {ready_url} within {timeout:.0f}s; see {log_file}")
    say(f"{name} running (pid {proc.pid}, log {log_file})")


def start_operator(config: str) -> None:
    start_background(
        "operator",
        [
            "run",
            "--liveness",
            f"http://127.0.0.1:{LIVENESS_PORT}/healthz",
            "--metrics",
            f"http://127.0.0.1:{METRICS_PORT}/metrics",
        ],
        {
            "KUBECONFIG": config,
            "GRAFT_GATEWAY_URL": GATEWAY_URL,
            "GRAFT_ARTIFACTS_URI": f"file://{ARTIFACTS}",
            # kwok would end Job pods at once; the local node runs them instead.
            "GRAFT_JOB_POD_ANNOTATIONS": json.dumps({"kwok.graft.dev/run-duration": "1h"}),
        },
        f"http://127.0.0.1:{LIVENESS_PORT}/healthz",
    )


def start_gateway(config: str) -> None:
    UPLOADS.mkdir(parents=True, exist_ok=True)
    start_background(
        "gateway",
        [
            "gateway",
            "--listen",
            GATEWAY_URL,
            "--metrics",
            f"http://127.0.0.1:{GATEWAY_METRICS_PORT}/metrics",
            "--namespace",
            "graft-system",
            "--uploads",
            f"file://{UPLOADS}",
        ],
        {"KUBECONFIG": config},
        f"{GATEWAY_URL}/ready",
    )


def start_local_node(config: str) -> None:
    try:
        pid = int(LOCAL_NODE_PID_FILE.read_text())
        os.kill(pid, 0)
        if pid_of("localnode") is None:
            (STATE / "localnode.pid").write_text(str(pid))
    except (OSError, ValueError):
        pass
    start_background(
        "localnode", ["localnode", "--namespace", NAMESPACE], {"KUBECONFIG": config}, None
    )


def up() -> int:
    config = kubeconfig()
    say("installing the CRDs")
    apply(config, str(ROOT / "crds"))
    kubectl(
        config, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds")
    )
    say("installing Graft's RBAC; the operator runs as its ServiceAccount (token valid 24 h)")
    start_operator(operator_identity(config))
    say("starting the gateway (the cluster admin's kubeconfig)")
    start_gateway(config)
    say("creating the demo Account (it owns the namespace the examples go to)")
    kubectl(config, "apply", "-f", str(ROOT / "examples" / "account.yaml"), check=False)
    wait = kubectl(
        config,
        "wait",
        f"accounts.graft.dev/{NAMESPACE}",
        "--for=condition=Ready",
        "--timeout=120s",
        check=False,
    )
    if wait.returncode != 0:
        print(
            kubectl(
                config, "get", "accounts.graft.dev", NAMESPACE, "-o", "yaml", check=False
            ).stdout
        )
        sys.exit(f"the Account {NAMESPACE!r} did not become Ready (see its conditions above)")
    say(f"starting the local node for namespace {NAMESPACE} (logs: {CACHE / 'localnode' / 'logs'})")
    start_local_node(config)
    say("applying examples/")
    print(kubectl(config, "apply", "-f", str(ROOT / "examples")).stdout, end="")
    say("waiting for the Deployments to be Ready")
    wait = kubectl(
        config,
        "wait",
        "deployments.graft.dev",
        "--all",
        "-n",
        NAMESPACE,
        "--for=condition=Ready",
        "--timeout=180s",
        check=False,
    )
    if wait.returncode != 0:
        print(kubectl(config, "get", "graft", "-A").stdout)
        print(wait.stderr, file=sys.stderr)
        sys.exit(f"the Deployments did not become Ready; operator log: {LOG_FILE}")
    train_and_chat(config)
    print(kubectl(config, "get", "graft", "-A").stdout)
    print(kubectl(config, "get", "pods", "-n", NAMESPACE, "-o", "wide").stdout)
    say(f"done. KUBECONFIG={config}")
    say("try: kubectl scale deployments.graft.dev/chat -n demo --replicas=3; kubectl get graft -A")
    say("stop with: make demo-stop && make cluster-down")
    return 0


def stop() -> int:
    # The local node first: it ends the model servers and Job containers it started.
    for name in ("localnode", "gateway", "operator"):
        pid = pid_of(name)
        if pid is None:
            say(f"the {name} is not running")
            (STATE / f"{name}.pid").unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if pid_of(name) is None:
                break
            time.sleep(0.2)
        else:
            say(f"the {name} (pid {pid}) did not stop in 30 s: killing its process group")
        # Anything left in its session (a container the local node could not end) goes too.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        say(f"stopped the {name} (pid {pid})")
    LOCAL_NODE_PID_FILE.unlink(missing_ok=True)
    return 0


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def get(config: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        kubectl(config, "get", kind, name, "-n", NAMESPACE, "-o", "json").stdout
    )
    return out


def wait_condition(config: str, kind: str, name: str, condition: str, timeout: int) -> None:
    wait = kubectl(
        config,
        "wait",
        f"{kind}/{name}",
        "-n",
        NAMESPACE,
        f"--for=condition={condition}",
        f"--timeout={timeout}s",
        check=False,
    )
    if wait.returncode != 0:
        print(kubectl(config, "get", kind, name, "-n", NAMESPACE, "-o", "yaml").stdout)
        sys.exit(
            f"{kind} {name} is not {condition} after {timeout}s (its status is above); "
            f"logs: {STATE}/*.log and {CACHE / 'localnode' / 'logs' / NAMESPACE}"
        )


def wait_for_training(config: str, timeout: int) -> None:
    """Until the FineTuningJob has Succeeded; a Failed one ends the demo at once, with why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get(config, "finetuningjobs.graft.dev", JOB).get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if (conditions.get("Succeeded") or {}).get("status") == "True":
            return
        failed = conditions.get("Failed") or {}
        if failed.get("status") == "True":
            sys.exit(
                f"FineTuningJob {JOB} failed: {failed.get('message')}\n"
                f"logs: {CACHE / 'localnode' / 'logs' / NAMESPACE}/{status.get('jobName')}-*/"
            )
        time.sleep(2)
    wait_condition(config, "finetuningjobs.graft.dev", JOB, "Succeeded", 1)


def train_and_chat(config: str) -> None:
    """The part that runs for real on this CPU (see the module docstring)."""
    from graft.dataplane.smallmodels import smollm2_dir

    say("SmolLM2-135M-Instruct as a local Hugging Face directory (converted once, ~1 min)")
    base_dir = smollm2_dir()
    say(f"applying the Base Model {BASE} and the Reference Deployment {DEPLOYMENT} (1 replica)")
    manifests = [
        obj("Model", BASE, {"kind": "Base", "source": {"uri": f"file://{base_dir}"}}),
        obj(
            "Deployment",
            DEPLOYMENT,
            {
                "baseModel": BASE,
                "replicas": 1,
                "engine": "Reference",
                "enableAddons": True,
                "maxAddons": 2,
                "maxAddonRank": 16,
            },
        ),
    ]
    apply(config, "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    wait_condition(config, "models.graft.dev", BASE, "Ready", 180)
    say(f"waiting for {DEPLOYMENT}'s replica: `graft serve` loading the model on this CPU")
    wait_condition(config, "deployments.graft.dev", DEPLOYMENT, "Ready", 300)
    say(f"applying the Dataset of examples/training/ ({DATASET}) and waiting for its validation")
    apply(config, str(ROOT / "examples" / "training" / "dataset.yaml"))
    wait_condition(config, "datasets.graft.dev", DATASET, "Ready", 180)
    say(f"training the addon {ADDON} (FineTuningJob {JOB}: 12 steps; skipped when done before)")
    job = obj(
        "FineTuningJob",
        JOB,
        {
            "baseModel": BASE,
            "dataset": DATASET,
            "outputModel": ADDON,
            "deployment": DEPLOYMENT,
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
    )
    apply(config, "-", input=json.dumps(job))
    wait_for_training(config, 900)
    status = get(config, "finetuningjobs.graft.dev", JOB).get("status") or {}
    say(f"trained: {status.get('steps')} steps, final loss {status.get('finalLoss')}")
    deployed = str(status.get("deployedModel") or "").rsplit("/", 1)[-1]
    if not deployed:
        sys.exit(f"FineTuningJob {JOB} succeeded but names no DeployedModel; see {LOG_FILE}")
    say(f"waiting for the DeployedModel {deployed}: the addon loaded into the running replica")
    wait_condition(config, "deployedmodels.graft.dev", deployed, "Ready", 240)
    key = api_key(config)
    say(f"one chat through the gateway ({GATEWAY_URL}) with the base and one with the addon")
    base = chat(f"accounts/{NAMESPACE}/models/{BASE}", key)
    addon = chat(f"accounts/{NAMESPACE}/models/{ADDON}", key)
    width = max(len(base), len(addon), 20)
    print(f"\n  system: {SYSTEM!r}   user: {QUESTION!r}")
    print(f"  {'base ' + BASE:<{width + 2}}  {'addon ' + ADDON}")
    print(f"  {base!r:<{width + 2}}  {addon!r}\n", flush=True)


def api_key(config: str) -> str:
    """alice's API key (examples/account.yaml), from the Secret the operator wrote."""
    for _ in range(60):
        secret = kubectl(
            config, "get", "secret", "alice-ci-apikey", "-n", NAMESPACE, "-o", "json", check=False
        )
        if secret.returncode == 0:
            return base64.b64decode(json.loads(secret.stdout)["data"]["apiKey"]).decode()
        time.sleep(1)
    sys.exit("the ApiKey alice-ci has no Secret alice-ci-apikey after 60s; see the operator log")


def chat(model: str, key: str) -> str:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
        ],
        "max_tokens": 16,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{GATEWAY_URL}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            answer = json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as err:
        sys.exit(f"the gateway answered {err.code} for {model}: {err.read(4096).decode()}")
    content: str = answer["choices"][0]["message"]["content"]
    return content


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit({"up": up, "stop": stop}[command]())
