"""The API key of a Deployment's model servers, derived from the installation's seed.

The operator and the gateway hold the same seed (a Secret in the operator's namespace), so both
can compute any Deployment's key, and neither needs the right to read Secrets in tenants'
namespaces. The model servers get theirs from the Secret the operator writes next to them.
"""

from __future__ import annotations

import hashlib
import hmac


def server_key(seed: bytes, namespace: str, deployment: str) -> str:
    """The key that `deployment` in `namespace` requires on every /v1/ request."""
    digest = hmac.new(seed, f"{namespace}/{deployment}".encode(), hashlib.sha256).hexdigest()
    return f"graft-{digest}"
