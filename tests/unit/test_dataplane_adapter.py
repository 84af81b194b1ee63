"""`graft model inspect`: reading an addon's adapter_config.json from real files and a real
HTTP server, and what it reports (the inspection Job's termination message)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from graft.api.reports import InspectionResult
from graft.dataplane import adapter
from harness.httpfake import serving

CONFIG = {"r": 16, "target_modules": ["v_proj", "q_proj"], "peft_type": "LORA"}


class Server:
    """Serves `files` by path (tests/harness/httpfake.py); records every request line; 500 for
    paths in `broken`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.broken: set[str] = set()
        self.paths: list[str] = []
        self.url = ""

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        self.paths.append(h.path)
        path = h.path.split("?", 1)[0]
        if path in self.broken:
            code, body = 500, b"try later"
        elif path in self.files:
            code, body = 200, self.files[path]
        else:
            code, body = 404, b"not here"
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    with serving(s) as url:
        s.url = url
        yield s


def run(source: str, tmp_path: Path) -> tuple[int, InspectionResult]:
    message = tmp_path / "termination-log"
    code = adapter.main([source, "--termination-message-path", str(message)])
    result = InspectionResult.from_message(message.read_text())
    assert result is not None, message.read_text()
    return code, result


def addon_dir(root: Path, config: object = CONFIG) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (root / "adapter_config.json").write_text(text)
    return root


def test_a_local_adapter_reports_rank_and_sorted_modules(tmp_path: Path) -> None:
    path = addon_dir(tmp_path / "sql")
    for source in (str(path), f"file://{path}", f"file://{path}/"):
        code, result = run(source, tmp_path)
        assert code == 0
        assert result == InspectionResult("valid", 16, ("q_proj", "v_proj"))


def test_a_claim_is_read_where_the_job_mounts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon_dir(tmp_path / "pvc" / "artifacts" / "acme" / "sql", {"r": 4, "target_modules": "all"})
    monkeypatch.setenv("GRAFT_PVC_ROOT", str(tmp_path / "pvc"))
    code, result = run("pvc://artifacts/acme/sql", tmp_path)
    assert (code, result.lora_rank, result.target_modules) == (0, 4, ("all",))


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("{nope", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ({"target_modules": ["q"]}, "no valid LoRA rank r (got None)"),
        ({"r": 0}, "no valid LoRA rank r (got 0)"),
        ({"r": True}, "no valid LoRA rank r (got True)"),
        ({"r": "8"}, "no valid LoRA rank r (got '8')"),
    ],
)
def test_an_unusable_config_is_invalid(tmp_path: Path, config: object, says: str) -> None:
    code, result = run(str(addon_dir(tmp_path / "a", config)), tmp_path)
    assert (code, result.status, result.lora_rank) == (1, "invalid", None)
    assert says in result.message


def test_a_missing_adapter_is_an_error_not_a_guess(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, result = run(str(tmp_path / "empty"), tmp_path)
    assert (code, result.status) == (1, "error")
    assert "adapter_config.json: no such file" in result.message


def test_an_oversized_config_is_refused(tmp_path: Path) -> None:
    big = {"r": 8, "padding": "x" * (adapter.MAX_CONFIG_BYTES + 10)}
    code, result = run(str(addon_dir(tmp_path / "big", big)), tmp_path)
    assert (code, result.status) == (1, "error")
    assert "at most 1048576" in result.message


def test_over_http_the_file_is_read_inside_the_directory_keeping_the_query(
    server: Server, tmp_path: Path
) -> None:
    server.files["/addons/sql/adapter_config.json"] = json.dumps(CONFIG).encode()
    code, result = run(f"{server.url}/addons/sql/?sig=abc", tmp_path)
    assert (code, result.lora_rank) == (0, 16)
    assert server.paths == ["/addons/sql/adapter_config.json?sig=abc"]
    # A fragment would have moved the file name out of the path: refused, nothing fetched.
    code, result = run(f"{server.url}/addons/sql#x", tmp_path)
    assert (code, result.status) == (1, "error")
    assert "#fragment" in result.message
    assert len(server.paths) == 1


def test_http_failures_say_whether_a_retry_may_help(server: Server, tmp_path: Path) -> None:
    code, result = run(f"{server.url}/gone", tmp_path)
    assert (code, result.status) == (1, "error")
    assert "HTTP 404" in result.message
    server.broken.add("/flaky/adapter_config.json")
    code, result = run(f"{server.url}/flaky", tmp_path)
    assert (code, result.status) == (3, "error")  # the Job's pod is retried


def test_the_result_fits_a_termination_message() -> None:
    many = InspectionResult("valid", 8, tuple(f"module_{i:04d}" * 10 for i in range(500)))
    text = many.to_message()
    assert len(text.encode()) <= 4096
    back = InspectionResult.from_message(text)
    assert back is not None
    assert back.lora_rank == 8
    assert 0 < len(back.target_modules) < 500
    assert InspectionResult.from_message("Traceback (most recent call last):") is None
