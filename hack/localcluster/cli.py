"""`python3 hack/localcluster up|down|kubeconfig|status`."""

from __future__ import annotations

import argparse

from localcluster.cluster import down, kubeconfig_path, restart, status, up
from localcluster.common import ClusterError, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localcluster",
        description="Local Kubernetes control plane (etcd, apiserver, controllers, kwok).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the cluster unless it is up; print the kubeconfig path")
    sub.add_parser("down", help="stop the cluster and remove its state")
    sub.add_parser("kubeconfig", help="print the kubeconfig path (exit 1 if the cluster is down)")
    sub.add_parser("status", help="show each component's state")
    again = sub.add_parser("restart", help="restart one component (e.g. kube-apiserver)")
    again.add_argument("component")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up())
        elif args.command == "down":
            down()
        elif args.command == "kubeconfig":
            print(kubeconfig_path())
        elif args.command == "restart":
            restart(args.component)
        elif args.command == "status":
            lines, ok = status()
            print("\n".join(lines))
            return 0 if ok else 1
    except (ClusterError, OSError) as err:
        log(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0
