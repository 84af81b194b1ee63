"""Resource signatures: the labels a client finds an existing resource by, to re-use it (pure).

The hosted platform's SDK is parsimonious: before creating a resource it looks for one with the
same signature. A Dataset's signature is (sha256 of the data, file name), a fine-tuning job's is
(job name, model). Both the operator (a validated Dataset's labels, graft.plan.dataset) and the
SDK (graft.sdk) compute them, so they live here.

Label values hold at most 63 characters: the sha256 label carries the first 63 of its 64 hex
digits (252 bits; the full digest is in status.sha256, which a client compares to be certain),
and a value that is not a valid label value (a long or odd file name, a job name) is replaced by
`sha256-` and the first 56 hex digits of its own SHA-256.
"""

from __future__ import annotations

import hashlib
import re

from graft.core import keys

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_safe(value: str) -> str:
    """`value` itself when it is a valid label value, else `sha256-` + 56 hex digits of it."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()[:56]


def label_hash(value: str) -> str:
    """Always a hash (`sha256-` + 56 hex digits): for values like full names, which hold '/'."""
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()[:56]


def filename_label(filename: str) -> str:
    """The file name as a label value: itself when it is one, else `sha256-` + 56 hex digits."""
    return label_safe(filename)


def signature_labels(sha256: str, filename: str) -> dict[str, str]:
    """A Dataset's signature labels (the operator sets them once validation read the data)."""
    return {keys.SHA256_PREFIX: sha256[:63], keys.FILENAME: filename_label(filename)}


def signature_selector(sha256: str, filename: str) -> str:
    """A label selector for Datasets with this data and file name (confirm with status.sha256)."""
    return selector(signature_labels(sha256, filename))


def job_signature_labels(name: str, model_full_name: str) -> dict[str, str]:
    """A fine-tuning job's signature labels, as the SDK sets them: its name and its model."""
    return {keys.SDK_JOB: label_safe(name), keys.SDK_MODEL: label_hash(model_full_name)}


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
