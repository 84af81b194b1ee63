"""A minimal API client (admin client certificate) and health probes."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

from localcluster.common import HOST
from localcluster.state import Layout


class Api:
    def __init__(self, layout: Layout, port: int) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(layout.cert("ca")))
        self.context.load_cert_chain(str(layout.cert("admin")), str(layout.key("admin")))

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(HOST, self.port, context=self.context, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return response.status, payload

    def get(self, path: str) -> tuple[int, Any]:
        """GET path; (0, error text) when the apiserver cannot be reached."""
        try:
            return self.request("GET", path, timeout=5.0)
        except (OSError, http.client.HTTPException) as err:
            return 0, str(err)

    def readyz(self) -> tuple[bool, str]:
        try:
            status, payload = self.request("GET", "/readyz", timeout=3.0)
        except (OSError, http.client.HTTPException) as err:
            return False, str(err)
        return status == 200, str(payload).strip()


def probe_http(url: str, timeout: float = 2.0) -> bool:
    """GET url; https is not verified (the component serves a self-signed certificate)."""
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def health_url(component: str, ports: dict[str, int]) -> str | None:
    return {
        "etcd": f"http://{HOST}:{ports['etcd']}/health",
        "kube-controller-manager": f"https://{HOST}:{ports['kube-controller-manager']}/healthz",
        "kube-scheduler": f"https://{HOST}:{ports['kube-scheduler']}/healthz",
        "kwok": f"http://{HOST}:{ports['kwok']}/healthz",
    }.get(component)
