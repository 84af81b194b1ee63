"""`graft gateway`: start the watch cache, wait until it has listed everything once, then serve
the OpenAI API and (on its own address) the Prometheus metrics until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from urllib.parse import urlparse

from graft.core import settings as core_settings
from graft.core.endpoints import parse_endpoint
from graft.gateway.server import Gateway, Settings, serve

log = logging.getLogger("graft.gateway")

DEFAULT_LISTEN = "http://0.0.0.0:8080"
DEFAULT_METRICS = "http://0.0.0.0:9091/metrics"
SYNC_TIMEOUT = 120.0


def address(url: str, flag: str, example: str) -> tuple[str, int]:
    try:
        endpoint = parse_endpoint(url, flag=flag, example=example, optional=False)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    assert endpoint is not None
    return endpoint.host, endpoint.port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="run the OpenAI-compatible gateway (API keys, routing)")
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="address of the API (default: %(default)s)"
    )
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help="Prometheus endpoint on an address of its own; '' or 'none' for none "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--namespace",
        help="the operator's namespace, where the model servers' key seed is "
        "(default: $GRAFT_OPERATOR_NAMESPACE or graft-system)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=Settings.queue_timeout,
        help="seconds a request waits for a replica (scale from zero included) before 503 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--uploads",
        default=None,
        metavar="URI",
        help="where dataset uploads go: file:///<dir> or s3://<bucket>[/<prefix>] (S3 credentials "
        "from AWS_* variables); default: $GRAFT_UPLOADS_URI, else $GRAFT_ARTIFACTS_URI when it is "
        "file://; pvc:// or none: the upload routes answer 501",
    )
    p.add_argument(
        "--max-upload-bytes",
        type=int,
        default=core_settings.DEFAULT_MAX_BYTES,
        help="largest dataset a user may upload (default: %(default)s, as GRAFT_DATASET_MAX_BYTES)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kubernetes", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    host, port = address(ns.listen, "--listen", DEFAULT_LISTEN)
    metrics = (
        None
        if ns.metrics.strip().lower() in ("", "none")
        else address(ns.metrics, "--metrics", DEFAULT_METRICS)
    )
    namespace = ns.namespace or core_settings.Settings.from_env(os.environ).operator_namespace
    if ns.max_upload_bytes < 1:
        raise SystemExit(f"--max-upload-bytes must be at least 1, not {ns.max_upload_bytes}")
    settings = Settings(
        queue_timeout=ns.queue_timeout,
        uploads_uri=uploads_uri(ns.uploads, os.environ),
        max_upload_bytes=ns.max_upload_bytes,
    )
    return asyncio.run(_main(host, port, metrics, namespace, settings))


def uploads_uri(flag: str | None, env: Mapping[str, str]) -> str | None:
    """The store of dataset uploads: the flag, GRAFT_UPLOADS_URI, or a file:// artifact store;
    None (uploads answer 501) for pvc://, which the gateway cannot reach, or nothing at all.
    SystemExit for a URI of another kind."""
    uri = (flag or env.get(core_settings.UPLOADS_ENV) or "").strip().rstrip("/")
    if not uri:
        artifacts = (env.get(core_settings.ARTIFACTS_ENV) or "").strip().rstrip("/")
        uri = artifacts if urlparse(artifacts).scheme == "file" else ""
    scheme = urlparse(uri).scheme
    if not uri or scheme == "pvc":
        log.info("dataset uploads are off (no file:// or s3:// store; --uploads sets one)")
        return None
    if scheme not in ("file", "s3") or (scheme == "s3" and not urlparse(uri).netloc):
        raise SystemExit(
            f"--uploads / {core_settings.UPLOADS_ENV}={uri!r}: expected file:///<dir> or "
            "s3://<bucket>[/<prefix>]"
        )
    parsed = urlparse(uri)
    if scheme == "file" and (parsed.netloc not in ("", "localhost") or parsed.path[:1] != "/"):
        raise SystemExit(f"--uploads {uri!r}: expected file:///<absolute path>")
    return uri


async def _main(
    host: str, port: int, metrics: tuple[str, int] | None, namespace: str, settings: Settings
) -> int:
    from graft.gateway.kube import ClusterCache, connect

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cache = ClusterCache(connect(), namespace)
    gateway = Gateway(cache, settings)
    cache.on_change = gateway.changes.notify
    gateway.changes.bind(loop)
    cache.start()
    # Listen at once: /health answers, and /ready says 503 until the cache has listed
    # everything once, so a slow API server delays readiness, not liveness.
    runner, extra = await serve(gateway, host, port, metrics)
    log.info(
        "gateway listening on http://%s:%d%s",
        host,
        port,
        f", metrics on http://{metrics[0]}:{metrics[1]}/metrics" if metrics else "",
    )

    async def report_sync() -> None:
        if await asyncio.to_thread(cache.wait_synced, SYNC_TIMEOUT):
            log.info("watch cache synced: ready")
        else:
            log.warning(
                "watch cache not synced after %.0fs; /ready says 503 until it is", SYNC_TIMEOUT
            )

    reporter = asyncio.create_task(report_sync())
    await stop.wait()
    log.info("stopping")
    reporter.cancel()
    cache.stop()
    for r in extra:
        await r.cleanup()
    await runner.cleanup()
    return 0
