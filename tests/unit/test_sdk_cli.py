"""The user verbs of `graft`: parsing, table/json/yaml output, errors as one line, and the shell
completion script (checked by bash itself). The API server is an aiohttp server on loopback that
answers like kube-apiserver, reached through a kubeconfig file, as a user's would be."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from graft.cli import _parser, main
from graft.sdk.cli import render, table
from harness.replicas import Loop

MODELS = [
    {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "tiny", "namespace": "acme", "managedFields": [{"x": 1}]},
        "spec": {"kind": "Base", "source": {"uri": "hf://x/y"}},
        "status": {
            "name": "accounts/acme/models/tiny",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        },
    },
    {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "tuned", "namespace": "acme"},
        "spec": {"kind": "PeftAddon", "baseModel": "tiny", "source": {"uri": "file:///a"}},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Inspecting"}]},
    },
]
JOB = {
    "metadata": {"name": "j", "namespace": "acme"},
    "spec": {"baseModel": "tiny", "dataset": "d", "outputModel": "j"},
    "status": {"state": "Training", "progress": {"step": 3, "totalSteps": 10}},
}


@pytest.fixture(autouse=True)
def no_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRAFT_ACCOUNT", "GRAFT_GATEWAY_URL", "GRAFT_API_KEY", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_parsing_the_user_verbs() -> None:
    parser = _parser()
    ns = parser.parse_args(["get", "fine-tuning-jobs", "j", "-o", "json", "--account", "acme"])
    assert (ns.resource, ns.id, ns.output, ns.account) == ("fine-tuning-jobs", "j", "json", "acme")
    assert parser.parse_args(["get", "model"]).resource == "models"  # singular works too
    ns = parser.parse_args(["create", "dataset", "train", "--file", "t.jsonl"])
    assert (ns.id, ns.file, ns.no_wait) == ("train", "t.jsonl", False)
    ns = parser.parse_args(
        [
            "create",
            "fine-tuning-job",
            "j",
            "--base-model",
            "tiny",
            "--dataset",
            "d",
            "--epochs",
            "2",
        ]
    )
    assert (ns.base_model, ns.dataset, ns.epochs, ns.wait) == ("tiny", "d", 2, False)
    ns = parser.parse_args(["load-lora", "tuned", "--deployment", "dep"])
    assert (ns.model, ns.deployment) == ("tuned", "dep")
    assert parser.parse_args(["chat", "accounts/acme/models/tiny"]).model.endswith("/tiny")
    # the existing subcommands keep their shape
    assert parser.parse_args(["crds", "-o", "out"]).output == "out"
    assert parser.parse_args(["dataset", "validate", "x.jsonl"]).source == "x.jsonl"


def test_an_unknown_resource_is_refused_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["get", "pods"])
    assert exited.value.code == 2
    assert "one of: models, deployments" in capsys.readouterr().err


def test_table_output() -> None:
    text = table(MODELS, "models")
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "BASE", "STATE"]
    assert lines[1].split() == ["accounts/acme/models/tiny", "Base", "Ready"]
    assert lines[2].split() == ["accounts/acme/models/tuned", "PeftAddon", "tiny", "Inspecting"]
    # the columns line up
    assert lines[1].index("Base") == lines[2].index("PeftAddon") == lines[0].index("KIND")
    jobs = table([JOB], "finetuningjobs").splitlines()
    assert jobs[1].split() == [
        "accounts/acme/finetuningjobs/j",
        "tiny",
        "d",
        "j",
        "3/10",
        "Training",
    ]


def test_json_and_yaml_output() -> None:
    listed = json.loads(render(MODELS, "models", "json", one=False))
    assert [m["metadata"]["name"] for m in listed["items"]] == ["tiny", "tuned"]
    assert "managedFields" not in listed["items"][0]["metadata"]
    one = yaml.safe_load(render(MODELS[:1], "models", "yaml", one=True))
    assert one["spec"] == {"kind": "Base", "source": {"uri": "hf://x/y"}}


# --- Through main(), against an API server on loopback -------------------------------------------


class ApiServer:
    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.requests: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _any(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        self.headers.append(dict(request.headers))
        base = "/apis/graft.dev/v1alpha1/namespaces/acme"
        if request.path == f"{base}/models" and request.method == "GET":
            return web.json_response({"kind": "ModelList", "items": MODELS})
        if request.path == f"{base}/models/tiny":
            return web.json_response(MODELS[0])
        if request.path.startswith("/apis/graft.dev/v1alpha1/namespaces/other/"):
            status = {
                "kind": "Status",
                "reason": "Forbidden",
                "message": 'models.graft.dev is forbidden: User "bob" cannot list',
                "code": 403,
            }
            return web.json_response(status, status=403)
        if request.path == f"{base}/finetuningjobs" and request.method == "POST":
            return web.json_response(body, status=201)
        return web.json_response(
            {"kind": "Status", "reason": "NotFound", "message": "not found", "code": 404},
            status=404,
        )


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[tuple[ApiServer, str]]:
    loop = Loop()
    server = ApiServer()
    loop.run(server.start())
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {"name": "k", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}
                ],
                "users": [{"name": "bob", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "k", "user": "bob", "namespace": "acme"}}
                ],
            }
        )
    )
    yield server, str(path)
    loop.run(server.stop())
    loop.close()


def test_get_lists_and_shows(
    kubeconfig: tuple[ApiServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = kubeconfig
    assert main(["get", "models", "--kubeconfig", path]) == 0
    out = capsys.readouterr().out
    assert "accounts/acme/models/tiny" in out
    assert "accounts/acme/models/tuned" in out
    assert (
        main(["get", "models", "accounts/acme/models/tiny", "-o", "json", "--kubeconfig", path])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["metadata"]["name"] == "tiny"


def test_errors_are_one_line_with_what_to_do(
    kubeconfig: tuple[ApiServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = kubeconfig
    assert main(["get", "models", "missing", "--kubeconfig", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("graft: error: ")
    assert "`graft get models` lists what there is" in err
    assert main(["get", "models", "--account", "other", "--kubeconfig", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "member role" in err
    assert "Traceback" not in err
    assert main(["get", "models", "--kubeconfig", str(Path(path).parent / "none")]) == 1
    err = capsys.readouterr().err
    assert "no account" in err or "kubeconfig" in err


def test_create_fine_tuning_job_sends_the_spec(
    kubeconfig: tuple[ApiServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, path = kubeconfig
    code = main(
        [
            "create",
            "fine-tuning-job",
            "j",
            "--base-model",
            "tiny",
            "--dataset",
            "d",
            "--epochs",
            "2",
            "--max-steps",
            "3",
            "--kubeconfig",
            path,
            "-o",
            "json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    [(_method, _, body)] = [r for r in server.requests if r[0] == "POST"]
    assert body["spec"] == {
        "baseModel": "tiny",
        "dataset": "d",
        "outputModel": "j",
        "hyperparameters": {"epochs": 2, "maxSteps": 3},
    }
    assert body["metadata"] == {"name": "j", "namespace": "acme"}


def test_an_invalid_dataset_lists_its_lines_and_sends_nothing(
    kubeconfig: tuple[ApiServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, path = kubeconfig
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p"}\nnot json\n')
    assert main(["create", "dataset", "bad", "--file", str(data), "--kubeconfig", path]) == 1
    err = capsys.readouterr().err
    assert "2 problems in" in err
    assert "line 1:" in err
    assert "line 2:" in err
    assert server.requests == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("words", "expected", "absent"),
    [
        ("graft ", {"get", "create", "load-lora", "chat", "run", "crds"}, set()),
        ("graft get ", {"models", "fine-tuning-jobs", "--account", "--output"}, {"run"}),
        ("graft create ", {"dataset", "fine-tuning-job"}, {"models"}),
        ("graft create dataset x --", {"--file", "--account"}, {"--base-model"}),
        ("graft --help get de", {"deployments", "deployed-models"}, {"datasets"}),
        ("graft completion ", {"bash", "zsh"}, set()),
    ],
)
def test_the_bash_completion_completes(words: str, expected: set[str], absent: set[str]) -> None:
    from graft.sdk.cli import completion_script

    parser = _parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = completion_script(sub, "bash")  # type: ignore[arg-type]
    split = words.split(" ")
    probe = (
        text
        + f"COMP_WORDS=({' '.join(repr(w) for w in split)}); COMP_CWORD={len(split) - 1}; _graft; "
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    got = set(result.stdout.split())
    assert expected <= got, result.stdout
    assert not (absent & got)


def test_the_completion_verb_prints_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("autoload -U +X bashcompinit")
    assert "complete -o default -F _graft graft" in out


def test_a_kubeconfig_that_impersonates_sends_the_header_as_kubectl_does(
    kubeconfig: tuple[ApiServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, path = kubeconfig
    config = yaml.safe_load(Path(path).read_text())
    config["users"][0]["user"]["as"] = "alice@example.com"
    Path(path).write_text(yaml.safe_dump(config))
    assert main(["get", "models", "--kubeconfig", path, "-o", "json"]) == 0
    assert server.headers[-1].get("Impersonate-User") == "alice@example.com"


def test_chat_streams_each_answer_and_keeps_the_conversation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    from graft.sdk.cli import _chat
    from graft.sdk.connection import Connection
    from harness.replicas import StubReplica

    loop = Loop()
    stub = StubReplica("gw", {"accounts/acme/models/tiny"}, key="k", chunks=2)
    loop.run(stub.start())
    try:
        ns = _parser().parse_args(["chat", "tiny", "--system", "Be brief."])
        conn = Connection("acme", gateway_url=f"http://127.0.0.1:{stub.port}", api_key="k")
        assert _chat(ns, conn, io.StringIO("hello\n\nagain\n")) == 0
    finally:
        loop.run(stub.stop())
        loop.close()
    out = capsys.readouterr().out.splitlines()
    assert (
        out
        == ["gw serves accounts/acme/models/tiny [0] gw serves accounts/acme/models/tiny [1] "] * 2
    )
    assert [m["role"] for m in stub.received[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert all(r["stream"] for r in stub.received)
