"""What every reconciler is given: the one API facade and the operator's settings.

Both are made once, when `graft run` starts (graft.controller.main), and passed down; no
reconciler reads the environment or builds its own client.
"""

from __future__ import annotations

from dataclasses import dataclass

from graft.controller.kube import Api
from graft.core.settings import Settings


@dataclass(frozen=True)
class Context:
    api: Api
    settings: Settings
