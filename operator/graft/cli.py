"""The `graft` command line: parse and dispatch, nothing else.

The user verbs (`get`, `create`, `load-lora`, `unload-lora`, `chat`, `completion`) are the
SDK's (graft.sdk.cli). The operator (`run`), the generators (`crds`, `chart`, `manifests`, `argocd`) and the Job
entrypoints (`dataset validate`, `model inspect`, `fetch`) are parsed here and run by their own modules; `train`
and `serve` have their own argument parsers and are imported only when called, so the operator
never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

# subcommand -> (module with `main(argv) -> int`, one-line help)
DATA_PLANE = {
    "train": ("graft.dataplane.train", "fine-tune a LoRA addon from a JSONL dataset"),
    "serve": (
        "graft.dataplane.serve",
        "OpenAI-compatible reference model server with vLLM's LoRA API",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in DATA_PLANE:
        module = importlib.import_module(DATA_PLANE[args[0]][0])
        code: int = module.main(args[1:])
        return code
    parser = _parser()
    ns = parser.parse_args(args)
    if not hasattr(ns, "func"):
        parser.print_help()
        return 2
    result: int = ns.func(ns)
    return result


def _crds(ns: argparse.Namespace) -> int:
    from graft.gen import crds

    for path in crds.write_all(Path(ns.output)):
        print(path)
    return 0


def _chart(ns: argparse.Namespace) -> int:
    from graft.gen import chart

    return chart.write_chart(Path(ns.chart), check=ns.check)


def _manifests(ns: argparse.Namespace) -> int:
    from graft.gen import chart

    return chart.write_manifests(Path(ns.output), Path(ns.chart), check=ns.check, helm=ns.helm)


def _argocd(ns: argparse.Namespace) -> int:
    from graft.gen import argocd

    return argocd.write_all(Path(ns.output), check=ns.check)


def _run(ns: argparse.Namespace) -> int:
    from graft.controller.main import run

    return run(
        namespace=ns.namespace, liveness=ns.liveness, verbose=ns.verbose, metrics_url=ns.metrics
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graft", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        action="append",
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL to serve (default: %(default)s)",
    )
    run.add_argument(
        "--metrics",
        default="http://0.0.0.0:9090/metrics",
        help="Prometheus metrics endpoint URL to serve, also while waiting for leadership; '' "
        "or 'none' serves none (default: %(default)s)",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=_run)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API")
    crds.add_argument("--output", "-o", default="crds", help="directory (default: %(default)s)")
    crds.set_defaults(func=_crds)

    # Entrypoints of the Jobs the operator runs (standard library, no torch).
    from graft.dataplane import adapter, fetch, validate

    validate.register(sub)
    fetch.register(sub)
    adapter.register(sub)

    from graft.gateway import main as gateway

    gateway.register(sub)

    from graft.localnode import command as localnode

    localnode.register(sub)

    # The user verbs (get, create, load-lora, unload-lora, chat, completion): the SDK's.
    from graft.sdk import cli as user

    user.register(sub)

    chart = sub.add_parser(
        "chart",
        help="write the Helm chart's generated files: CRD and RBAC templates, Chart.yaml",
    )
    chart.add_argument(
        "--chart", default="deploy/charts/graft", help="chart directory (default: %(default)s)"
    )
    chart.add_argument(
        "--check", action="store_true", help="only check: exit 1 if a file is out of date"
    )
    chart.set_defaults(func=_chart)

    manifests = sub.add_parser(
        "manifests",
        help="render the plain manifests (Namespace + `helm template` of the chart)",
    )
    manifests.add_argument(
        "--output", "-o", default="deploy/graft.yaml", help="file (default: %(default)s)"
    )
    manifests.add_argument(
        "--chart", default="deploy/charts/graft", help="chart directory (default: %(default)s)"
    )
    manifests.add_argument(
        "--helm", help="helm binary (default: $HELM, the one `make controlplane` built, PATH)"
    )
    manifests.add_argument(
        "--check", action="store_true", help="only check: exit 1 if the file is out of date"
    )
    manifests.set_defaults(func=_manifests)

    argocd = sub.add_parser(
        "argocd",
        help="write the Argo CD health checks (health.lua per kind) and the argocd-cm patch",
    )
    argocd.add_argument(
        "--output", "-o", default="deploy/argocd", help="directory (default: %(default)s)"
    )
    argocd.add_argument(
        "--check", action="store_true", help="only check: exit 1 if a file is out of date"
    )
    argocd.set_defaults(func=_argocd)

    for name, (_, help_text) in DATA_PLANE.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
