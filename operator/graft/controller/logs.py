"""Kubernetes-style (klog) log lines: `I1122 00:34:01.123456   4242 deployment.py:88] message`."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

_LEVEL = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}


class KlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        prefix = (
            f"{_LEVEL.get(record.levelname, 'I')}{ts:%m%d %H:%M:%S.%f} {os.getpid():7d} "
            f"{record.filename}:{record.lineno}]"
        )
        # kopf's per-object loggers put the object in `k8s_ref`.
        ref = getattr(record, "k8s_ref", None)
        where = ""
        if isinstance(ref, dict) and ref.get("name"):
            ns = ref.get("namespace")
            where = f" [{ns}/{ref['name']}]" if ns else f" [{ref['name']}]"
        message = f"{prefix}{where} {record.getMessage()}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes.client.rest", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kopf says "Handler ... succeeded" for every event of every pod; keep its warnings only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
