"""The Argo CD health checks in deploy/argocd/, run as Argo CD runs them.

Argo CD evaluates `resource.customizations.health.<group>_<Kind>` scripts in gopher-lua (Lua 5.1)
with only the base, table and a trimmed os library: no string, math, io, debug, require or load.
`sandbox()` builds that environment in lupa's Lua 5.1 (with the string metatable cleared, so
`s:sub()` fails as it does there) and every case of every kind's health_test.yaml, Argo CD's own
test format, runs through it. The scripts and the argocd-cm patch are generated
(graft.gen.argocd) and must not drift; the reasons the scripts call terminal are checked against
what the reconcilers and plans really publish.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from graft.api.kinds import ALL_KINDS
from graft.api.serving import DeploymentSpec
from graft.gen import argocd
from harness import dump

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
PACKAGE = ROOT / "operator" / "graft"
KINDS = [k.kind for k in ALL_KINDS]
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# --- Argo CD's Lua, as far as a script can tell ---------------------------------------------------

REMOVED = (
    "string",
    "math",
    "io",
    "debug",
    "require",
    "package",
    "module",
    "load",
    "loadstring",
    "loadfile",
    "dofile",
    "python",  # lupa's own bridge
)


def sandbox() -> Any:
    """A fresh Lua 5.1 state with what Argo CD's health scripts get and nothing more."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    # Before debug goes: strings lose their metatable, so ("x"):format() and s:sub() fail.
    lua.execute(
        'debug.setmetatable("", nil)\n'
        "local time, date = os.time, os.date\n"
        "os = {time = time, date = date}\n"
    )
    g = lua.globals()
    for name in REMOVED:
        g[name] = None
    return lua


def to_lua(lua: Any, value: Any) -> Any:
    """A decoded YAML/JSON value as Argo CD hands it to Lua: tables, arrays 1-based."""
    if isinstance(value, dict):
        table = lua.table()
        for k, v in value.items():
            table[k] = to_lua(lua, v)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, v in enumerate(value, 1):
            table[i] = to_lua(lua, v)
        return table
    return value


def evaluate(script: str, obj: dict[str, Any]) -> tuple[Any, Any]:
    """(hs.status, hs.message) of a health script for `obj`."""
    lua = sandbox()
    lua.globals().obj = to_lua(lua, obj)
    hs = lua.execute(script)
    assert hs is not None, "the script returned nothing"
    return hs["status"], hs["message"]


class KubeLoader(yaml.SafeLoader):
    """YAML as the API server's JSON would have it: timestamps stay strings."""


KubeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=KubeLoader)  # KubeLoader is a SafeLoader


# --- The sandbox is Argo CD's, not a friendlier one -----------------------------------------------


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ('return string.format("%d", 1)', "string"),
        ('local s = "abc"\nreturn s:sub(1, 1)', "attempt to index"),
        ('return ("x"):format()', "attempt to index"),
        ("return math.floor(1.5)", "math"),
        ('return io.open("/etc/passwd")', "io"),
        ('return require("os")', "require"),
        ('return loadstring("return 1")()', "loadstring"),
        ('return load("return 1")', "load"),
        ('return dofile("/dev/null")', "dofile"),
        ("return os.exit(1)", "exit"),
        ('return os.getenv("HOME")', "getenv"),
        ("return debug.getinfo(1)", "debug"),
        ("return python.eval('1')", "python"),
    ],
)
def test_the_sandbox_lacks_what_argo_cd_lacks(script: str, error: str) -> None:
    with pytest.raises(lua51.LuaError, match=error):
        sandbox().execute(script)


def test_the_sandbox_has_what_argo_cd_has() -> None:
    lua = sandbox()
    assert lua.execute('return "a" .. 1 .. tostring(true)') == "a1true"
    assert lua.execute('return #"abc"') == 3
    assert lua.execute('return tonumber("42") + 1') == 43
    assert lua.execute("local n = 0\nfor _, v in ipairs({4, 5}) do n = n + v end\nreturn n") == 9
    assert (
        lua.execute("local n = 0\nfor k in pairs({a = 1, b = 2}) do n = n + 1 end\nreturn n") == 2
    )
    assert lua.execute('return type({}) .. type("") .. type(nil)') == "tablestringnil"
    assert lua.execute("return table.concat({'a', 'b'}, ',')") == "a,b"
    assert isinstance(lua.execute("return os.time()"), int | float)
    # Numbers read from JSON are printed as Argo CD prints them: 3, not 3.0.
    assert lua.execute("return tostring(3) .. (2 .. '')") == "32"


def test_a_script_using_the_string_library_fails_on_a_real_object() -> None:
    """What the sandbox is for: a script that works in plain Lua and would fail in Argo CD."""
    bad = (
        "hs = {}\n"
        'hs.status = "Healthy"\n'
        "hs.message = string.format('%s: %s', obj.status.conditions[1].reason, 'x')\n"
        "return hs\n"
    )
    obj = load(ARGOCD / "graft.dev" / "Account" / "testdata" / "ready.yaml")
    plain = lua51.LuaRuntime()
    plain.globals().obj = to_lua(plain, obj)
    assert plain.execute(bad)["message"] == "Provisioned: x"
    with pytest.raises(lua51.LuaError, match="string"):
        evaluate(bad, obj)


# --- Every kind, every case of its health_test.yaml ---------------------------------------------


def kind_dir(kind: str) -> Path:
    return ARGOCD / "graft.dev" / kind


def cases() -> Iterator[Any]:
    for kind in KINDS:
        spec = load(kind_dir(kind) / "health_test.yaml")
        for case in spec["tests"]:
            yield pytest.param(kind, case, id=f"{kind}/{Path(case['inputPath']).stem}")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_health_check_in_argo_cd_layout(kind: str) -> None:
    directory = kind_dir(kind)
    assert (directory / "health.lua").is_file()
    assert (directory / "health_test.yaml").is_file()
    assert sorted(p.name for p in directory.iterdir()) == [
        "health.lua",
        "health_test.yaml",
        "testdata",
    ]
    assert {p.name for p in (ARGOCD / "graft.dev").iterdir()} == set(KINDS)


@pytest.mark.parametrize(("kind", "case"), list(cases()))
def test_health(kind: str, case: dict[str, Any]) -> None:
    script = (kind_dir(kind) / "health.lua").read_text()
    obj = load(kind_dir(kind) / case["inputPath"])
    assert obj["apiVersion"] == "graft.dev/v1alpha1"
    assert obj["kind"] == kind
    status, message = evaluate(script, obj)
    expected = case["healthStatus"]
    assert expected["status"] in STATUSES
    assert (status, message) == (expected["status"], expected["message"])


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_tested_in_every_state_it_can_be_in(kind: str) -> None:
    spec = load(kind_dir(kind) / "health_test.yaml")
    tests = spec["tests"]
    assert len(tests) >= 5
    inputs = [t["inputPath"] for t in tests]
    assert len(set(inputs)) == len(inputs)
    # Every fixture is used, every case has its fixture.
    assert {f"testdata/{p.name}" for p in (kind_dir(kind) / "testdata").iterdir()} == set(inputs)
    seen = {t["healthStatus"]["status"] for t in tests}
    assert {"Healthy", "Progressing", "Degraded"} <= seen
    if argocd.BY_KIND[kind].replicas_field is not None:
        assert "Suspended" in seen
    messages = {t["healthStatus"]["message"] for t in tests}
    assert "waiting for status" in messages
    # Every case but the new object's names the reason it shows.
    for t in tests:
        message = t["healthStatus"]["message"]
        assert message == "waiting for status" or re.search(r"[A-Z][a-zA-Z]+: |generation", message)


# --- Generated files: no drift -------------------------------------------------------------------


def test_health_scripts_and_configmap_are_generated() -> None:
    for path, text in argocd.wanted_files(ARGOCD).items():
        assert path.read_text() == text, f"{path} is out of date: run `make argocd`"
    assert argocd.write_all(ARGOCD, check=True) == 0


def test_configmap_carries_the_scripts_on_disk() -> None:
    on_disk = {kind: (kind_dir(kind) / "health.lua").read_text() for kind in KINDS}
    text = (ARGOCD / "argocd-cm.yaml").read_text()
    assert text == argocd.render_configmap(on_disk)
    cm = yaml.safe_load(text)
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == (
        "v1",
        "ConfigMap",
        "argocd-cm",
    )
    assert cm["data"] == {
        f"resource.customizations.health.graft.dev_{k}": on_disk[k] for k in KINDS
    }
    assert argocd.configmap_data() == cm["data"]


def test_check_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert argocd.write_all(tmp_path, check=True) == 1
    assert argocd.write_all(tmp_path, check=False) == 0
    assert argocd.write_all(tmp_path, check=True) == 0
    path = argocd.lua_path(tmp_path, "Model")
    path.write_text(path.read_text().replace("Degraded", "Healthy"))
    capsys.readouterr()
    assert argocd.write_all(tmp_path, check=True) == 1
    assert "Model/health.lua is out of date" in capsys.readouterr().err


def test_configmap_refuses_a_script_yaml_would_change() -> None:
    with pytest.raises(ValueError, match="one newline"):
        argocd.render_configmap(dict.fromkeys(KINDS, "return {}"))


def strip_comments_and_strings(lua: str) -> str:
    lua = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', lua)
    return re.sub(r"--[^\n]*", "", lua)


@pytest.mark.parametrize("kind", KINDS)
def test_scripts_use_nothing_argo_cd_lacks_even_on_paths_not_taken(kind: str) -> None:
    code = strip_comments_and_strings((kind_dir(kind) / "health.lua").read_text())
    assert "'" not in code, "one quoting style keeps the check simple"
    for library in ("string", "math", "io", "debug", "package", "utf8"):
        assert not re.search(rf"\b{library}\s*\.", code), library
    assert not re.search(r"\b(require|load|loadstring|loadfile|dofile|setfenv|getfenv)\b", code)
    assert not re.search(r"[\w\)\]\"]\s*:\s*[A-Za-z_]\w*\s*[\(\"{]", code), "a method call"
    assert not re.search(r"\bos\s*\.\s*(?!time\b|date\b)", code)
    assert "goto" not in code  # Lua 5.2


def test_scaled_to_zero_reads_the_scale_subresource_field() -> None:
    scalable = [h for h in argocd.HEALTH if h.kind.scale]
    assert [h.kind.kind for h in scalable] == ["Deployment"]
    assert scalable[0].replicas_field == "replicas"
    assert "replicas" in DeploymentSpec.model_fields
    assert all(h.replicas_field is None for h in argocd.HEALTH if not h.kind.scale)


def test_health_covers_every_kind_once() -> None:
    assert [h.kind.kind for h in argocd.HEALTH] == KINDS
    for h in argocd.HEALTH:
        assert argocd.INVALID_SPEC in h.terminal
        assert len(set(h.terminal)) == len(h.terminal)


# --- The terminal reasons are the ones the reconcilers publish as failures ------------------------

# Where each kind's Ready reasons are decided. controller/dataset.py's source_problem() also
# gates a FineTuningJob's trainer (controller/finetuning.py inputs_ready).
SOURCES = {
    "Account": ("plan/account.py", "controller/account.py"),
    "User": ("plan/user.py", "controller/user.py"),
    "ApiKey": ("plan/apikey.py", "controller/apikey.py"),
    "Model": ("plan/model.py", "controller/model.py"),
    "Deployment": ("plan/deployment.py", "controller/deployment.py"),
    "DeployedModel": (
        "plan/deployedmodel.py",
        "controller/deployedmodel.py",
        "controller/lookup.py",
    ),
    "Dataset": ("plan/dataset.py", "controller/dataset.py"),
    "FineTuningJob": ("plan/finetuning.py", "controller/finetuning.py", "controller/dataset.py"),
}


def _literal(node: ast.expr | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def published(paths: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(reasons published as failures, reasons published as waits) by the problem and progress
    constructors in `paths`: Progress.failed/waiting/running, BlockedBy, ModelProblem,
    UserProblem, KeyProblem, Verdict and AccountProblem (its state)."""
    failed: set[str] = set()
    waiting: set[str] = set()
    for rel in paths:
        for node in ast.walk(ast.parse((PACKAGE / rel).read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            reason: Any = None
            is_failure = False
            if owner == "Progress" and name in ("failed", "waiting", "running"):
                reason, is_failure = _literal(_arg(node, 0, "reason")), name == "failed"
            elif name in ("BlockedBy", "ModelProblem", "UserProblem", "KeyProblem"):
                reason = _literal(_arg(node, 0, "reason"))
                is_failure = not _literal(_arg(node, 2, "waiting"))
            elif name == "Verdict" and _literal(_arg(node, 0, "admitted")) is False:
                reason = _literal(_arg(node, 1, "reason"))
                is_failure = not _literal(_arg(node, 3, "waiting"))
            elif name == "AccountProblem":
                reason = _literal(_arg(node, 0, "reason"))
                is_failure = _literal(_arg(node, 2, "state")) == "Failed"
            if isinstance(reason, str):
                (failed if is_failure else waiting).add(reason)
    return failed, waiting


def string_literals(paths: tuple[str, ...]) -> set[str]:
    return {
        node.value
        for rel in paths
        for node in ast.walk(ast.parse((PACKAGE / rel).read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_the_reason_scanner_finds_what_it_should() -> None:
    failed, waiting = published(SOURCES["Deployment"])
    assert {"BaseModelNotBase", "UnsupportedModelSource", "InvalidBaseModel"} <= failed
    assert {"BaseModelNotFound", "PodCreationForbidden", "InvalidBaseModel"} <= waiting
    failed, waiting = published(SOURCES["Account"])
    assert failed == {"NamespaceConflict"}
    assert waiting == {
        "NamespaceTerminating",
        "QuotaPending",
        "DeletionBlocked",
        "ClusterRoleMissing",
        "SecretsBindingRefused",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_terminal_reasons_match_what_the_code_publishes(kind: str) -> None:
    terminal = set(argocd.BY_KIND[kind].terminal)
    failed, waiting = published(SOURCES[kind])
    assert failed <= terminal, f"{kind} publishes these as failures: add them to gen/argocd.py"
    # A reason published both ways (Deployment's InvalidBaseModel) counts as terminal.
    assert not (waiting - failed) & terminal, f"{kind}: waits listed as terminal"
    # No listed reason is gone from the code (InvalidSpec is for every kind, coming or not).
    gone = terminal - string_literals(SOURCES[kind]) - {argocd.INVALID_SPEC}
    assert not gone, f"{kind}: no longer published: {gone}"


# --- Fixtures dumped from the integration tests -------------------------------------------------


def test_dumping_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dump.ENV, raising=False)
    obj = load(kind_dir("Deployment") / "testdata" / "ready.yaml")
    assert dump.dump(obj, "ready") is None
    # Not even the cluster is touched.
    assert dump.dump_current(None, "deployments.graft.dev", "chat", "acme", "ready") is None  # type: ignore[arg-type]


def test_a_dump_is_a_fixture_without_what_changes_between_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(dump.ENV, str(tmp_path))
    obj = load(kind_dir("Dataset") / "testdata" / "validated.yaml")
    live = {
        **obj,
        "metadata": {
            **obj["metadata"],
            "uid": "6f1c0d9e-1b2a-4c3d-9e8f-7a6b5c4d3e2f",
            "resourceVersion": "4711",
            "creationTimestamp": "2026-03-02T09:14:05Z",
            "managedFields": [{"manager": "graft", "operation": "Apply"}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "graft.dev/last-handled-configuration": "{}",
                "example.com/owner": "team-a",
            },
        },
    }
    path = dump.dump(live, "validated")
    assert path == tmp_path / "graft.dev" / "Dataset" / "testdata" / "validated.yaml"
    written = load(path)
    assert written == {
        **obj,
        "metadata": {**obj["metadata"], "annotations": {"example.com/owner": "team-a"}},
    }
    assert path.read_text().startswith("# Dumped from a real object")
    script = (kind_dir("Dataset") / "health.lua").read_text()
    assert evaluate(script, written) == evaluate(script, obj)


def test_fixture_names_from_reasons() -> None:
    assert dump.kebab("TooManyAddons") == "too-many-addons"
    assert dump.kebab("RankTooHigh") == "rank-too-high"


@pytest.mark.parametrize("kind", KINDS)
def test_at_least_five_cases_of_each_kind_are_real_objects(kind: str) -> None:
    """Dumped by the integration tests (tests/harness/dump.py, hack/argocd-fixtures.py): what
    the operator really wrote, not what someone thinks it writes. Hand-written ones are for
    states the API server will not store (an invalid spec) or that no test reaches."""
    real = [
        p.name
        for p in sorted((kind_dir(kind) / "testdata").iterdir())
        if p.read_text().startswith("# Dumped from a real object")
    ]
    assert len(real) >= 5, real
