#!/usr/bin/env python3
"""`make demo`: Graft on the local control plane (or the cluster $KUBECONFIG names).

    demo.py up     install the CRDs, start the operator in the background, apply examples/,
                   wait until every Deployment is Ready, print `kubectl get graft -A`
    demo.py stop   stop the operator started by `up`

Without KUBECONFIG it starts the local control plane (hack/localcluster); stop that with
`make cluster-down`. The operator runs here as a process (`graft run`), as it would in its pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def kubeconfig() -> str:
    configured = os.environ.get("KUBECONFIG")
    if configured:
        say(f"using the cluster in KUBECONFIG={configured}")
        return configured
    say("no KUBECONFIG: starting the local control plane (first run builds it from Go modules)")
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), "up"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


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


def operator_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


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


def start_operator(config: str) -> None:
    if operator_pid() is not None:
        say(f"the operator is already running (pid {operator_pid()}, log {LOG_FILE})")
        return
    STATE.mkdir(parents=True, exist_ok=True)
    graft = Path(sys.executable).with_name("graft")
    with LOG_FILE.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(graft),
                "run",
                "--liveness",
                f"http://127.0.0.1:{LIVENESS_PORT}/healthz",
                "--metrics",
                f"http://127.0.0.1:{METRICS_PORT}/metrics",
            ],
            env={**os.environ, "KUBECONFIG": config},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PID_FILE.write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the operator exited with {proc.returncode}; see {LOG_FILE}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{LIVENESS_PORT}/healthz", timeout=1):
                say(
                    f"operator running (pid {proc.pid}, log {LOG_FILE}, "
                    f"metrics http://127.0.0.1:{METRICS_PORT}/metrics)"
                )
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the operator did not become live within 60s; see {LOG_FILE}")


def up() -> int:
    config = kubeconfig()
    say("installing the CRDs")
    apply(config, str(ROOT / "crds"))
    kubectl(
        config, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds")
    )
    say("installing Graft's RBAC; the operator runs as its ServiceAccount (token valid 24 h)")
    start_operator(operator_identity(config))
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
    # Let the rest of what examples/ made settle too, so the listing below tells the truth.
    kubectl(
        config,
        "wait",
        "models.graft.dev,users.graft.dev",
        "--all",
        "-n",
        NAMESPACE,
        "--for=condition=Ready",
        "--timeout=60s",
        check=False,
    )
    print(kubectl(config, "get", "graft", "-A").stdout)
    print(kubectl(config, "get", "pods", "-n", NAMESPACE, "-o", "wide").stdout)
    if wait.returncode != 0:
        print(wait.stderr, file=sys.stderr)
        sys.exit(f"the Deployments did not become Ready; operator log: {LOG_FILE}")
    say(f"done. KUBECONFIG={config}")
    say("try: kubectl scale deployments.graft.dev/chat -n demo --replicas=3; kubectl get graft -A")
    say("stop with: make demo-stop && make cluster-down")
    return 0


def stop() -> int:
    pid = operator_pid()
    if pid is None:
        say("the operator is not running")
        return 0
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if operator_pid() is None:
            break
        time.sleep(0.2)
    PID_FILE.unlink(missing_ok=True)
    say(f"stopped the operator (pid {pid})")
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit({"up": up, "stop": stop}[command]())
