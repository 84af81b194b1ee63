"""One operator at a time: leader election on a coordination.k8s.io Lease in the operator's
namespace, as Kubernetes' own controllers do it.

`graft run` waits for the Lease before it starts kopf, renews it in a thread every few seconds,
and releases it when it stops, so a rolling update hands over at once. A leader that cannot
renew for a whole lease duration may already have been replaced: it exits at once (the kubelet
restarts it as a follower) rather than act next to the new leader. While it waits, a standby
answers the liveness probe, so a follower is not restarted for waiting. `graft_operator_leader`
says whether this process holds the Lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from graft.controller.metrics import OperatorMetrics
from graft.core import keys

log = logging.getLogger(__name__)

LEASE_NAME = keys.LEADER_LEASE
LEASE_SECONDS = 15
RENEW_SECONDS = 5.0
RETRY_SECONDS = 2.0


def identity() -> str:
    """This process's name in the Lease: the pod's name (HOSTNAME) and a random suffix, so a
    restarted container is a new holder."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class NoNamespace(RuntimeError):
    """The Lease's namespace does not exist, or the operator may not use it there: a setting
    to fix, not a state to wait out."""


class LeaseElector:
    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        name: str = LEASE_NAME,
        holder: str | None = None,
        lease_seconds: int = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.metrics = metrics or OperatorMetrics()
        self.namespace = namespace
        self.name = name
        self.holder = holder or identity()
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._stop = threading.Event()

    # --- one attempt ----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; False if another holds it
        (or won a race for it)."""
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 403:
                raise NoNamespace(
                    f"the operator may not read its Lease in namespace {self.namespace!r}: set "
                    "GRAFT_OPERATOR_NAMESPACE to the namespace it is installed in (its Role is "
                    "bound there)"
                ) from None
            if exc.status != 404:
                raise
            return self._create(now)
        spec = lease.spec or client.V1LeaseSpec()
        held_by = spec.holder_identity or ""
        if held_by and held_by != self.holder and not self._expired(spec, now):
            return False
        if held_by != self.holder:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("taking the lease %s/%s over from %r", self.namespace, self.name, held_by)
        spec.holder_identity = self.holder
        spec.renew_time = now
        spec.lease_duration_seconds = self.lease_seconds
        lease.spec = spec
        try:
            # The resourceVersion read above makes this fail if anyone wrote it since.
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _create(self, now: datetime) -> bool:
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.holder,
                lease_duration_seconds=self.lease_seconds,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self.api.create_namespaced_lease(self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            if exc.status == 404:
                raise NoNamespace(
                    f"the operator's namespace {self.namespace!r} does not exist: create it, or "
                    "set GRAFT_OPERATOR_NAMESPACE to the namespace the operator runs in"
                ) from None
            raise
        return True

    @staticmethod
    def _expired(spec: Any, now: datetime) -> bool:
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return True
        if renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=UTC)
        return bool(now > renewed + timedelta(seconds=spec.lease_duration_seconds or 0))

    # --- the whole life -------------------------------------------------------------------------

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        said = False
        while True:
            try:
                if self.try_acquire():
                    log.info("leading: holding lease %s/%s", self.namespace, self.name)
                    self.metrics.leader.set(1)
                    return
            except (ApiException, OSError) as exc:
                self.metrics.lease_errors.inc()
                log.warning("cannot read lease %s/%s: %s", self.namespace, self.name, exc)
            if not said:
                log.info(
                    "waiting for leadership: lease %s/%s is held by another operator",
                    self.namespace,
                    self.name,
                )
                said = True
            time.sleep(RETRY_SECONDS)

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew the Lease every few seconds; `on_lost()` when a whole lease duration passed
        without a renewal, or another holder took it."""

        def lost() -> None:
            self.metrics.leader.set(0)
            on_lost()

        def loop() -> None:
            last = time.monotonic()
            while not self._stop.wait(self.renew_seconds):
                try:
                    if self.try_acquire():
                        last = time.monotonic()
                        continue
                    log.error("lost lease %s/%s to another operator", self.namespace, self.name)
                    lost()
                    return
                except (ApiException, OSError) as exc:
                    self.metrics.lease_errors.inc()
                    log.warning("renewing lease %s/%s failed: %s", self.namespace, self.name, exc)
                if time.monotonic() - last > self.lease_seconds:
                    log.error("could not renew lease %s/%s in time", self.namespace, self.name)
                    lost()
                    return

        thread = threading.Thread(target=loop, name="lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up (on a clean stop), so the next operator need not wait it out."""
        self._stop.set()
        self.metrics.leader.set(0)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.holder:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiException, OSError) as exc:
            log.warning("releasing lease %s/%s failed: %s", self.namespace, self.name, exc)


@contextmanager
def standby_health(endpoint: str | None) -> Iterator[None]:
    """Answer the liveness endpoint with 200 while waiting for leadership (kopf's own endpoint
    starts only with kopf)."""
    if not endpoint:
        yield
        return
    parts = urlsplit(endpoint)

    class Standby(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"standby": "waiting for leadership"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Standby)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
