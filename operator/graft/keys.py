"""Every label, annotation, finalizer and field-manager key Graft uses, in one place."""

from __future__ import annotations

GROUP = "graft.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kopf bookkeeping (progress, last-handled configuration) lives in annotations with this
# prefix, never in status, so the strict status schema stays ours.
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"
FIELD_MANAGER = "graft"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "graft"
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"

DEPLOYMENT = f"{GROUP}/deployment"
"""Label on model-server pods and Services: the name of the owning Graft Deployment."""

SPEC_HASH = f"{GROUP}/spec-hash"
"""Label on model-server pods: hash of the pod template they were built from."""

MODEL_SERVER = "model-server"
