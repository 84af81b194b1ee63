"""The import rules between the folders of operator/graft/, read from the source of every module.

A folder's name says who runs its code, and the rules keep it true:

| folder      | runs in                | may import from graft            | never imports                   |
|-------------|------------------------|----------------------------------|---------------------------------|
| api/        | everything (contracts) | api                              | kopf, kubernetes, torch & co.   |
| core/       | everything (vocabulary)| api, core                        | kopf, kubernetes, torch & co.   |
| plan/       | the operator (pure)    | api, core, plan                  | kopf, kubernetes, torch & co.   |
| controller/ | the operator (I/O)     | api, core, plan, controller      | torch & co.                     |
| gen/        | the build              | api, core, gen                   | kopf, kubernetes, torch & co.   |
| dataplane/  | Graft's pods           | api, core, dataplane             | kopf, kubernetes                |
| gateway/    | the gateway            | api, core, gateway               | kopf, kubernetes*, torch & co.  |
| sdk/        | a user's program / CLI | api, core, sdk                   | kopf, torch & co.               |
| localnode/  | the local cluster      | api, core, localnode             | kopf, torch & co.               |

*gateway/kube.py, the gateway's watch cache, is the one module of the gateway that imports
`kubernetes`: everything else in gateway/ (catalog, routing, limits, the aiohttp server) works on
what the cache hands it and is tested without a cluster.

`graft` itself (the version) may be imported anywhere; cli.py dispatches to every folder and is
not a layer. The SDK (graft.sdk) runs in a user's own Python program with the user's own
credentials: it talks to the API server (kubernetes) and the gateway (openai, httpx), never
loads the operator's kopf nor torch. Imports inside functions and under TYPE_CHECKING count like any other.

The gateway is its own program (any number of replicas, no leader): it never carries the
operator's kopf, nor a model server's torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "graft"

CLUSTER_CLIENTS = ("kopf", "kubernetes")
DATA_PLANE_LIBRARIES = ("torch", "transformers", "peft", "safetensors", "fastapi", "uvicorn")


@dataclass(frozen=True)
class Layer:
    may_import: tuple[str, ...]  # graft folders this layer may import from
    never: tuple[str, ...]  # third-party top-level packages it must not import


LAYERS = {
    "api": Layer(("api",), CLUSTER_CLIENTS + DATA_PLANE_LIBRARIES),
    "core": Layer(("api", "core"), CLUSTER_CLIENTS + DATA_PLANE_LIBRARIES),
    "plan": Layer(("api", "core", "plan"), CLUSTER_CLIENTS + DATA_PLANE_LIBRARIES),
    "controller": Layer(("api", "core", "plan", "controller"), DATA_PLANE_LIBRARIES),
    "gen": Layer(("api", "core", "gen"), CLUSTER_CLIENTS + DATA_PLANE_LIBRARIES),
    "dataplane": Layer(("api", "core", "dataplane"), CLUSTER_CLIENTS),
    "gateway": Layer(("api", "core", "gateway"), CLUSTER_CLIENTS + DATA_PLANE_LIBRARIES),
    "sdk": Layer(("api", "core", "sdk"), ("kopf", *DATA_PLANE_LIBRARIES)),
    "localnode": Layer(("api", "core", "localnode"), ("kopf", *DATA_PLANE_LIBRARIES)),
}
EXCEPTIONS = {"graft.gateway.kube": ("kubernetes",)}
"""Modules allowed a third-party package their layer never imports, and which."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved;
    `from graft import x` names graft.x when x is a module or package of graft."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = base.startswith("graft") and _exists(candidate)
                found.append((node.lineno, candidate if is_module else base))
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def violations(layer_name: str, module: str, source: str, is_package: bool = False) -> list[str]:
    """What `source` (module `module` of folder `layer_name`) imports against the rules."""
    layer = LAYERS[layer_name]
    out = []
    for line, imported in imported_modules(source, module, is_package):
        top = imported.split(".")[0]
        if top == "graft":
            parts = imported.split(".")
            if len(parts) == 1:
                continue  # the package itself: its version
            if parts[1] not in layer.may_import:
                out.append(f"{module}:{line} imports {imported} ({layer_name}/ may not)")
        elif top in layer.never and top not in EXCEPTIONS.get(module, ()):
            out.append(f"{module}:{line} imports {imported} ({layer_name}/ never does)")
    return out


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder in LAYERS:
            found.append((folder, path))
    return found


def test_every_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS), "a new folder needs its row in LAYERS (and in the docs)"
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == ["__init__.py", "cli.py"], "modules belong in a layer's folder"


@pytest.mark.parametrize(
    ("layer", "path"), modules(), ids=[str(p.relative_to(PACKAGE)) for _, p in modules()]
)
def test_imports_follow_the_layers(layer: str, path: Path) -> None:
    found = violations(layer, module_name(path), path.read_text(), path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("layer", "module", "source"),
    [
        ("api", "graft.api.kinds", "from graft.core import keys\n"),
        ("core", "graft.core.names", "from graft.plan.deployment import service\n"),
        ("plan", "graft.plan.deployment", "import kopf\n"),
        ("plan", "graft.plan.deployment", "from kubernetes import client\n"),
        ("plan", "graft.plan.deployment", "from graft.controller import kube\n"),
        ("plan", "graft.plan.jobs", "def f():\n    from graft.dataplane import fetch\n"),
        ("plan", "graft.plan.jobs", "from ..dataplane.termination import LIMIT\n"),
        ("controller", "graft.controller.main", "from graft.dataplane import termination\n"),
        ("controller", "graft.controller.main", "from graft import dataplane\n"),
        ("controller", "graft.controller.main", "import torch\n"),
        ("dataplane", "graft.dataplane.fetch", "from graft.controller.kube import Api\n"),
        ("dataplane", "graft.dataplane.train.trainer", "from ...plan import jobs\n"),
        ("gen", "graft.gen.rbac", "import kubernetes.client\n"),
        ("gen", "graft.gen.crds", "from graft.controller.kube import Api\n"),
        ("dataplane", "graft.dataplane.fetch", "import kopf\n"),
        ("core", "graft.core.names", "if TYPE_CHECKING:\n    from graft.plan import jobs\n"),
        ("api", "graft.api.reports", "from transformers import AutoTokenizer\n"),
        ("gateway", "graft.gateway.routing", "import kopf\n"),
        ("gateway", "graft.gateway.routing", "from kubernetes import watch\n"),
        ("gateway", "graft.gateway.server", "from kubernetes import client\n"),
        ("gateway", "graft.gateway.kube", "import kopf\n"),
        ("gateway", "graft.gateway.limits", "from graft.plan.deployment import service\n"),
        ("gateway", "graft.gateway.errors", "from fastapi import HTTPException\n"),
        ("gateway", "graft.gateway.apikeys", "from ..controller.kube import Api\n"),
        ("plan", "graft.plan.deployment", "from graft.gateway import limits\n"),
        ("sdk", "graft.sdk.llm", "import kopf\n"),
        ("sdk", "graft.sdk.llm", "import torch\n"),
        ("sdk", "graft.sdk.dataset", "from graft.plan.dataset import default_filename\n"),
        ("sdk", "graft.sdk.dataset", "from graft.dataplane import fetch\n"),
        ("sdk", "graft.sdk.llm", "from graft.controller.kube import Api\n"),
    ],
)
def test_a_planted_violation_is_caught(layer: str, module: str, source: str) -> None:
    assert violations(layer, module, source), f"{module} importing {source!r} went unnoticed"


def test_allowed_imports_pass() -> None:
    source = (
        "from graft import __version__\n"
        "from graft.api.kinds import Plural\n"
        "from graft.core import keys\n"
        "from . import deployment\n"
        "import json\n"
    )
    assert violations("plan", "graft.plan.jobs", source) == []
