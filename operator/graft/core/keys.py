"""Every label, annotation, finalizer and field-manager key Graft uses, in one place."""

from __future__ import annotations

GROUP = "graft.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

RBAC_GROUP = "rbac.authorization.k8s.io"

# kopf bookkeeping (progress, last-handled configuration) lives in annotations with this
# prefix, never in status, so the strict status schema stays ours.
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"
FIELD_MANAGER = "graft"
AUTOSCALER_FIELD_MANAGER = "graft-autoscaler"
"""The field manager of spec.replicas when the autoscaler sets it: managedFields say who did."""

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "graft"
NAME = "app.kubernetes.io/name"
NAME_VALUE = "graft"
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"

DEPLOYMENT = f"{GROUP}/deployment"
"""Label on model-server pods and Services: the name of the owning Graft Deployment."""

SPEC_HASH = f"{GROUP}/spec-hash"
"""Label on model-server pods: hash of the pod template they were built from."""

MODEL_SERVER = "model-server"

# --- Accounts and Users ----------------------------------------------------------------------

ACCOUNT = f"{GROUP}/account"
"""Label on an account's Namespace and ResourceQuota, and on Users' RoleBindings: the account."""

USER = f"{GROUP}/user"
"""Label on a User's RoleBinding: the name of the User it grants."""

API_KEY = f"{GROUP}/apikey"
"""Label on an ApiKey's Secret, Role and RoleBinding: the name of the ApiKey."""

KEY_ID = f"{GROUP}/key-id"
"""Label on an ApiKey's Secret: the public ID of the key it holds (never the key)."""

ACCOUNT_NAMESPACE = "account-namespace"
ACCOUNT_QUOTA = "account-quota"
ACCOUNT_NETWORK_POLICY = "account-network-policy"
ACCOUNT_SECRETS_BINDING = "account-secrets-binding"
USER_BINDING = "user-binding"
API_KEY_SECRET = "apikey-secret"
API_KEY_ACCESS = "apikey-access"
"""app.kubernetes.io/component values of the children of Accounts, Users and ApiKeys (the
RoleBinding that lets the operator read and delete Secrets in an account's namespace; the
Secret that holds a key; the Role and RoleBinding that let its User read it)."""

ACCOUNT_SECRETS_CLUSTER_ROLE = "graft-operator-account-secrets"
"""The ClusterRole (graft.gen.rbac) with the operator's rights on Secrets, which it holds only
where an Account binds it to the operator: in that account's namespace."""

OPERATOR_COMPONENT = "operator"
GATEWAY_COMPONENT = "gateway"
"""app.kubernetes.io/component of the operator's and the gateway's own pods (the chart's)."""

PART_OF = "app.kubernetes.io/part-of"
PART_OF_VALUE = "graft"
"""Label on everything Graft installs (CRDs, RBAC, the operator's Deployment)."""

# --- Datasets and fine-tuning ----------------------------------------------------------------

DATASET = f"{GROUP}/dataset"
"""Label on a dataset validation Job and its pods: the name of the Dataset it validates."""

MODEL = f"{GROUP}/model"
"""Label on a Model's inspection Job and its pods: the name of the (addon) Model it reads."""

INSPECTED_SOURCE = f"{GROUP}/inspected-source"
"""Annotation on a Model's inspection Job: the SHA-256 (first 32 hex digits) of the source URI
it reads, so that a changed source replaces the Job instead of trusting its old answer."""

FINETUNING_JOB = f"{GROUP}/finetuning-job"
"""Label on a trainer Job and its pods, and on the Model and DeployedModel a FineTuningJob
created: the FineTuningJob's name."""

FINETUNING_JOB_UID = f"{GROUP}/finetuning-job-uid"
"""Annotation on the Model and DeployedModel a FineTuningJob created: its uid, so that a later
job of the same name does not mistake them for its own."""

SHA256_PREFIX = f"{GROUP}/sha256-prefix"
"""Label on a validated Dataset: the first 63 hex characters of its SHA-256 (a label value holds
at most 63 characters; the full digest is in status.sha256)."""

FILENAME = f"{GROUP}/filename"
"""Label on a validated Dataset: its file name, or `sha256-<56 hex>` of the name when the name is
not a valid label value (see graft.core.signatures.filename_label)."""

DATASET_VALIDATOR = "dataset-validator"
TRAINER = "trainer"
MODEL_INSPECTOR = "model-inspector"
"""app.kubernetes.io/component values of the Jobs Graft runs."""

FINETUNING_OUTPUT = "finetuning-output"
"""app.kubernetes.io/component of the Model and DeployedModel a FineTuningJob publishes."""

# --- Owners -----------------------------------------------------------------------------------

OWNER_LABELS = {
    "Account": ACCOUNT,
    "User": USER,
    "ApiKey": API_KEY,
    "Deployment": DEPLOYMENT,
    "Dataset": DATASET,
    "FineTuningJob": FINETUNING_JOB,
    "Model": MODEL,
}
"""The label that names the owner, by the kind of Graft object that owns (or made) a child."""

SERVER_KEY_SEED_SECRET = "graft-server-key-seed"
"""The Secret in the operator's namespace that every model-server API key is derived from."""

IN_USE_FINALIZER = f"{GROUP}/in-use-protection"
"""Graft's own finalizer on Models: held while a Deployment or DeployedModel (of any account, for
a public model) uses the Model, removed by the Model reconciler when nothing does; like
kubernetes.io/pvc-protection, it waits for events, not for a retry timer."""

ACCOUNT_FINALIZER = f"{GROUP}/account-protection"
"""Graft's own finalizer on Accounts: held until the account's namespace is empty of Graft
resources (deletionPolicy Refuse) or deleted (Delete); removed by the Account reconciler on the
events of the Account and of its content, never by a retry timer."""

LEADER_LEASE = "graft-operator"
"""The coordination.k8s.io Lease in the operator's namespace that one operator at a time holds."""

# --- The SDK's signatures -----------------------------------------------------------------------

SDK_FIELD_MANAGER = "graft-sdk"
"""The field manager of what the Python SDK (graft.sdk) applies: managedFields say who did."""

SDK_JOB = f"{GROUP}/sdk-job"
"""Label on a FineTuningJob the SDK created: the job's `name` (its signature, with the model), or
`sha256-<56 hex>` of it when the name is not a valid label value."""

SDK_MODEL = f"{GROUP}/sdk-model"
"""Label on a FineTuningJob the SDK created: `sha256-<56 hex>` of its base model's full name (the
other half of its signature)."""

SDK_LLM = f"{GROUP}/sdk-llm"
"""Label on a DeployedModel the SDK created for an LLM: the Deployment it loads the addon into."""
