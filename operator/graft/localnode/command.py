"""The `graft localnode` command line; what it runs is main.py's, imported only when called (so
that every other `graft` command, in pods too, does not import the kubernetes client)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graft.core.settings import DEFAULT_REFERENCE_IMAGE, REFERENCE_IMAGE_ENV
from graft.localnode import paths

DESCRIPTION = (
    "Run the pods of batch/v1 Jobs that carry kwok.graft.dev/run-duration, and model-server "
    "pods whose image is Graft's runtime image, as processes on this machine; other pods stay "
    "kwok's fakes. Stops every process it started on SIGTERM/SIGINT. Logs: "
    "<dir>/logs/<namespace>/<pod>/<container>.log (`graft localnode logs POD -n NS`)."
)


def _main(ns: argparse.Namespace) -> int:
    from graft.localnode.main import logs, run, runtime_images

    base = Path(ns.dir) if ns.dir else paths.root()
    if getattr(ns, "logs_pod", None):
        return logs(ns.logs_pod, ns.logs_namespace, ns.container, base)
    if not ns.namespace:
        print(
            "graft localnode: say which namespaces to run pods of: --namespace NS (repeatable)",
            file=sys.stderr,
        )
        return 2
    return run(ns.namespace, ns.kubeconfig, runtime_images(ns.image), base)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "localnode",
        help="run Graft's Job and model-server pods of the local cluster as local processes",
        description=DESCRIPTION,
    )
    p.add_argument(
        "--namespace",
        action="append",
        help="run the pods of this namespace (repeatable; required)",
    )
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")
    p.add_argument(
        "--image",
        action="append",
        help="another image whose model-server pods to run (default: Graft's runtime image, "
        f"${REFERENCE_IMAGE_ENV} or {DEFAULT_REFERENCE_IMAGE})",
    )
    p.add_argument(
        "--dir",
        help="state directory: pid file, logs/<namespace>/<pod>/<container>.log, pods/ "
        "(default: $GRAFT_CACHE_DIR/localnode, else ~/.cache/graft/localnode)",
    )
    p.set_defaults(func=_main)
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    lg = actions.add_parser("logs", help="print a pod's container logs")
    lg.add_argument("logs_pod", metavar="POD")
    lg.add_argument("-n", "--namespace", dest="logs_namespace", default="default")
    lg.add_argument("-c", "--container", help="only this container")
    lg.set_defaults(func=_main)
