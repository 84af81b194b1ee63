"""The API key of a Deployment's model servers, and the progress token of a FineTuningJob's
trainer, both derived from the installation's seed.

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


PROGRESS_TOKEN_PREFIX = "graft-progress-"
_PROGRESS_DOMAIN = b"graft progress token\x00"


def progress_token(seed: bytes, namespace: str, job: str, uid: str) -> str:
    """The token a FineTuningJob's trainer presents to the gateway when it reports progress.

    Bound to the job's uid, so a job deleted and created again under the same name gets another
    one. The HMAC input starts with a domain tag and a NUL byte, which no server_key input
    (`namespace/deployment`, DNS names) contains, and the prefix differs: a progress token is
    never a model server's key, nor the other way round."""
    message = _PROGRESS_DOMAIN + f"{namespace}/{job}/{uid}".encode()
    digest = hmac.new(seed, message, hashlib.sha256).hexdigest()
    return f"{PROGRESS_TOKEN_PREFIX}{digest}"
