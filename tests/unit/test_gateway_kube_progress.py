"""The watch cache's side of live progress (graft.gateway.kube): the job as the gateway sees it,
and the one status write, sent by the real kubernetes client to a stand-in API server on
loopback that records the request and answers as the test says."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from graft.core.serverkeys import progress_token
from graft.gateway.kube import ClusterCache
from graft.gateway.progress import JobRecord, Outcome

REPORT = {
    "step": 1,
    "totalSteps": 2,
    "epoch": 1,
    "totalEpochs": 1,
    "updatedAt": "2026-11-28T10:00:00Z",
}


class ApiServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], str, Any]] = []
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                url = urlsplit(self.path)
                server.requests.append(
                    ("PATCH", url.path, parse_qs(url.query), self.headers["Content-Type"], body)
                )
                answer = json.dumps({"kind": "Status", "code": server.status}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.close()


def cache_for(api: ApiServer) -> ClusterCache:
    configuration = client.Configuration()
    configuration.host = api.url
    return ClusterCache(client.ApiClient(configuration), "graft-system")


def test_the_write_is_a_merge_patch_of_progress_at_the_cached_version(api: ApiServer) -> None:
    cache = cache_for(api)
    outcome = asyncio.run(cache.patch_progress("acme", "tune", "7", REPORT))
    assert outcome == Outcome.WRITTEN
    ((method, path, query, content_type, body),) = api.requests
    assert (method, path) == (
        "PATCH",
        "/apis/graft.dev/v1alpha1/namespaces/acme/finetuningjobs/tune/status",
    )
    assert content_type == "application/merge-patch+json"
    assert query["fieldManager"] == ["graft-gateway"]
    assert body == {"metadata": {"resourceVersion": "7"}, "status": {"progress": REPORT}}


def test_a_refused_precondition_or_a_gone_job_is_an_outcome_not_an_error(api: ApiServer) -> None:
    cache = cache_for(api)
    api.status = 409
    assert asyncio.run(cache.patch_progress("acme", "tune", "7", REPORT)) == Outcome.CONFLICT
    api.status = 404
    assert asyncio.run(cache.patch_progress("acme", "tune", "7", REPORT)) == Outcome.GONE
    api.status = 500
    with pytest.raises(ApiException):
        asyncio.run(cache.patch_progress("acme", "tune", "7", REPORT))


def test_jobs_and_tokens_come_from_the_cache_and_the_seed(api: ApiServer) -> None:
    cache = cache_for(api)
    assert cache.finetuning_job("acme", "tune") is None
    assert cache.progress_token("acme", "tune", "u1") is None  # no seed yet
    cache.stores["finetuningjobs"].objects["acme/tune"] = {
        "metadata": {"namespace": "acme", "name": "tune", "uid": "u1", "resourceVersion": "9"},
        "status": {"conditions": [{"type": "Succeeded", "status": "True"}]},
    }
    assert cache.finetuning_job("acme", "tune") == JobRecord("u1", "9", finished=True)
    cache._seed = b"seed"
    assert cache.progress_token("acme", "tune", "u1") == progress_token(
        b"seed", "acme", "tune", "u1"
    )


def test_the_dashboard_reads_one_namespaces_objects_of_a_kind(api: ApiServer) -> None:
    cache = cache_for(api)
    datasets = cache.stores["datasets"].objects  # the gateway follows Datasets for the dashboard
    for ns, name in (("acme", "b"), ("acme", "a"), ("other", "c")):
        datasets[f"{ns}/{name}"] = {"metadata": {"namespace": ns, "name": name}}
    assert [o["metadata"]["name"] for o in cache.objects("datasets", "acme")] == ["a", "b"]
    assert cache.objects("datasets", "nobody") == []
    assert cache.objects("pods", "acme") == []  # pods are the routing's, not raw objects
    assert cache.objects("secrets", "acme") == []  # not watched at all


def test_dataset_and_job_changes_leave_the_routing_catalog_alone() -> None:
    from graft.gateway.kube import GRAFT_KINDS, UNROUTED

    assert "datasets" in GRAFT_KINDS
    assert {"datasets", "finetuningjobs"} <= UNROUTED
