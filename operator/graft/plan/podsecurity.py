"""Pod Security "restricted" for every pod Graft creates (pure).

Account namespaces enforce the restricted profile (graft.plan.account), so the API server itself
refuses a Graft pod that would not meet it; these are the settings that meet it. Graft's own
images run as this numeric user; an image that needs root (vLLM's runs as root by default) runs
as it too, with HOME on a writable path.
"""

from __future__ import annotations

from typing import Any

RUN_AS_USER = 65532
"""The numeric user (and group) of every Graft pod: "nonroot" in distroless images."""

POD_SECURITY_LEVEL = "restricted"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def restricted(pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` (a PodSpec) with the restricted profile's settings on it and on every container."""
    out = dict(pod)
    out["securityContext"] = pod_security_context()
    for key in ("initContainers", "containers"):
        if key in out:
            out[key] = [{**c, "securityContext": container_security_context()} for c in out[key]]
    return out


def namespace_labels() -> dict[str, str]:
    """Labels that make the API server enforce (and warn and audit) the restricted profile."""
    out = {}
    for mode in ("enforce", "warn", "audit"):
        out[f"pod-security.kubernetes.io/{mode}"] = POD_SECURITY_LEVEL
        out[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    return out
