"""The operator's seed for model-server API keys: a Secret in the operator's own namespace,
made by the operator the first time it starts and read at every start.

Every Deployment's key is derived from it (graft.core.serverkeys.server_key), so the operator
never reads a Deployment's Secret back (the only tenant Secrets it reads are ApiKeys', by name).
"""

from __future__ import annotations

import base64
import logging
import secrets

from kubernetes.client.exceptions import ApiException

from graft.controller.kube import Api
from graft.core import keys
from graft.core.objects import INSTALLED_LABELS

log = logging.getLogger(__name__)

SEED_SECRET = keys.SERVER_KEY_SEED_SECRET
SEED_FIELD = "seed"


def load_seed(api: Api, namespace: str) -> bytes:
    """The seed, creating its Secret when there is none yet (two operators starting at once
    agree: the second one's create fails and it reads the first one's)."""
    for _ in range(3):
        found = api.get_secret(namespace, SEED_SECRET)
        raw = ((found or {}).get("data") or {}).get(SEED_FIELD)
        if raw:
            return base64.b64decode(raw)
        if found is not None:
            raise RuntimeError(f"secret {namespace}/{SEED_SECRET} has no {SEED_FIELD!r} key")
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": SEED_SECRET,
                "namespace": namespace,
                "labels": dict(INSTALLED_LABELS),
            },
            "stringData": {SEED_FIELD: secrets.token_hex(32)},
        }
        try:
            if api.create_secret(secret) is not None:
                log.info("created %s/%s, the seed of model-server API keys", namespace, SEED_SECRET)
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"could not read or create secret {namespace}/{SEED_SECRET}")
