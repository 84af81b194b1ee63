"""What every reconciler is given: the one API facade, the client of the model servers and the
operator's settings.

All are made once, when `graft run` starts (graft.controller.main), and passed down; no
reconciler reads the environment or builds its own client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from graft.controller.kube import Api
from graft.controller.modelclient import ModelServers
from graft.core.settings import Settings


def _nobody(plural: str, namespace: str, name: str) -> None:
    """The default of `Context.kick`: nobody to tell (tests that call a reconciler directly)."""


def _never(plural: str, namespace: str, name: str, delay: float) -> None:
    """The default of `Context.recheck`: nobody to tell."""


@dataclass(frozen=True)
class Context:
    api: Api
    settings: Settings
    servers: ModelServers = field(default_factory=ModelServers)
    server_key_seed: bytes = b""
    """The secret every Deployment's model-server API key is derived from (graft.controller.
    serverkeys); kept in a Secret in the operator's namespace."""
    kick: Callable[[str, str, str], None] = _nobody
    """kick(plural, namespace, name): reconcile this object again soon, off the caller's thread
    (a background load that ended calls it)."""
    recheck: Callable[[str, str, str, float], None] = _never
    """recheck(plural, namespace, name, delay): reconcile this object again `delay` seconds from
    now (graft.controller.rechecks), for kinds without a kopf timer (an ApiKey's expiry)."""
