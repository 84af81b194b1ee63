"""The SDK's errors: the API server's answers translated (never a bare ApiException or 422), and
local validation that lists every problem with its line number before anything is contacted.

The API server here is an aiohttp server on loopback answering with the Status bodies a real
kube-apiserver sends; the SDK talks to it through the real kubernetes client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from graft.sdk import Connection, Dataset
from graft.sdk.dataset import dataset_failure
from graft.sdk.errors import (
    Conflict,
    DatasetInvalid,
    Forbidden,
    GraftError,
    InvalidSpec,
    NotFound,
    Unavailable,
    translate,
)
from harness.replicas import Loop

INVALID = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'FineTuningJob.graft.dev "x" is invalid: [spec.outputModel: Invalid value: '
    '"X": spec.outputModel in body should match ..., spec.hyperparameters.epochs: Invalid '
    "value: 0: should be greater than or equal to 1]",
    "reason": "Invalid",
    "details": {
        "name": "x",
        "group": "graft.dev",
        "kind": "FineTuningJob",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: "X": spec.outputModel in body should match ...',
                "field": "spec.outputModel",
            },
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0: should be greater than or equal to 1",
                "field": "spec.hyperparameters.epochs",
            },
        ],
    },
    "code": 422,
}
FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'datasets.graft.dev is forbidden: User "bob" cannot create resource "datasets" '
    'in API group "graft.dev" in the namespace "acme"',
    "reason": "Forbidden",
    "details": {"group": "graft.dev", "kind": "datasets"},
    "code": 403,
}


def test_a_422_is_invalid_spec_with_the_field_messages() -> None:
    error = translate(422, json.dumps(INVALID), action="create FineTuningJob x")
    assert isinstance(error, InvalidSpec)
    assert error.reason == "Invalid"
    text = str(error)
    assert "spec.outputModel: Invalid value" in text
    assert "spec.hyperparameters.epochs: Invalid value: 0" in text
    assert "fix these fields" in text


def test_a_403_names_the_role_needed() -> None:
    error = translate(
        403,
        json.dumps(FORBIDDEN),
        action="create Dataset train",
        resource="accounts/acme/datasets/train",
        account="acme",
    )
    assert isinstance(error, Forbidden)
    assert "member" in error.message
    assert "graft-member" in error.message
    assert "acme" in error.message
    assert error.resource == "accounts/acme/datasets/train"


@pytest.mark.parametrize(
    ("code", "kind"),
    [(404, NotFound), (409, Conflict), (500, Unavailable), (503, Unavailable), (0, Unavailable)],
)
def test_other_statuses(code: int, kind: type[GraftError]) -> None:
    error = translate(code, b"not json", action="read Model m")
    assert isinstance(error, kind)
    assert "read Model m" in error.message


def test_a_failed_dataset_raises_its_line_numbered_problems() -> None:
    obj: dict[str, Any] = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "InvalidDataset",
                    "message": "2 problems in data.jsonl:\nline 2: malformed JSON\nline 5: x",
                }
            ],
            "errors": ["line 2: malformed JSON", "line 5: x"],
        }
    }
    error = dataset_failure(obj, "accounts/a/datasets/d")
    assert isinstance(error, DatasetInvalid)
    assert error.problems == ["line 2: malformed JSON", "line 5: x"]
    assert "line 5" in str(error)
    other = dataset_failure(
        {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "X"}]}}, "n"
    )
    assert not isinstance(other, DatasetInvalid)
    assert other.reason == "X"


# --- Against an API server on loopback ---------------------------------------------------------


class FakeApiServer:
    """Answers like kube-apiserver: 422 on creating FineTuningJobs, 403 on Datasets, 404 on a
    missing Model; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

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
        self.requests.append((request.method, request.path))
        if request.path.endswith("/finetuningjobs"):
            return web.json_response(INVALID, status=422)
        if "/datasets" in request.path:
            return web.json_response(FORBIDDEN, status=403)
        return web.json_response(
            {"kind": "Status", "reason": "NotFound", "message": "not found", "code": 404},
            status=404,
        )


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    loop = Loop()
    server = FakeApiServer()
    loop.run(server.start())
    yield server
    loop.run(server.stop())
    loop.close()


def connection(port: int) -> Connection:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return Connection(
        "acme", api_client=client.ApiClient(configuration), timeout=5, gateway_url="http://x"
    )


def test_the_connection_translates_the_api_servers_errors(api: FakeApiServer) -> None:
    conn = connection(api.port)
    with pytest.raises(InvalidSpec) as invalid:
        conn.create("finetuningjobs", {"metadata": {"name": "x"}, "spec": {}})
    assert "spec.hyperparameters.epochs" in str(invalid.value)
    assert invalid.value.resource == "accounts/acme/finetuningjobs/x"
    with pytest.raises(Forbidden) as forbidden:
        conn.list("datasets")
    assert "member role" in str(forbidden.value)
    assert conn.get("models", "missing") is None
    assert ("GET", "/apis/graft.dev/v1alpha1/namespaces/acme/models/missing") in api.requests


def test_an_unreachable_api_server_is_unavailable() -> None:
    conn = connection(1)
    with pytest.raises(Unavailable, match="cannot reach the API server"):
        conn.list("models")


def test_an_invalid_file_fails_locally_with_every_line_and_contacts_nothing(
    api: FakeApiServer, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        "{not json\n"
        "\n"
        '{"messages": [{"role": "user", "content": "only a question"}]}\n'
        '{"prompt": "p", "completion": "c"}\n'
    )
    dataset = Dataset.from_file(path, connection=connection(api.port))
    with pytest.raises(DatasetInvalid) as caught:
        dataset.sync()
    error = caught.value
    assert error.problems == [
        "line 2: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        "line 4: no assistant message: nothing to learn from this example",
        "line 5: completion example in a chat dataset (line 1 is chat); a file holds one format",
    ]
    assert str(error).startswith(f"3 problems in {path}:")
    assert "line 4:" in str(error)
    assert api.requests == []  # nothing created, nothing uploaded, nothing even read


def test_an_empty_list_is_invalid() -> None:
    with pytest.raises(DatasetInvalid, match="empty dataset"):
        Dataset.from_list([], account="acme").validate()
