"""The eight Graft kinds: their spec and status types and what their CRDs say about them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from graft.api.common import GraftModel, StatusBase
from graft.api.models import ModelSpec, ModelStatus
from graft.api.serving import (
    DeployedModelSpec,
    DeployedModelStatus,
    DeploymentSpec,
    DeploymentStatus,
)
from graft.api.tenancy import (
    AccountSpec,
    AccountStatus,
    ApiKeySpec,
    ApiKeyStatus,
    UserSpec,
    UserStatus,
)
from graft.api.training import DatasetSpec, DatasetStatus, FineTuningJobSpec, FineTuningJobStatus


class Plural(StrEnum):
    """The resource names of the Graft kinds, as in URLs, RBAC rules, full names and
    references (accounts/<account>/<plural>/<id>). A StrEnum: it is the string itself."""

    ACCOUNTS = "accounts"
    USERS = "users"
    API_KEYS = "apikeys"
    MODELS = "models"
    DEPLOYMENTS = "deployments"
    DEPLOYED_MODELS = "deployedmodels"
    DATASETS = "datasets"
    FINE_TUNING_JOBS = "finetuningjobs"


@dataclass(frozen=True)
class Column:
    """A `kubectl get` printer column."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


READY = Column(
    "Ready",
    '.status.conditions[?(@.type=="Ready")].status',
    description="Whether the object is Ready.",
)
STATE = Column("State", ".status.state", description="Short summary of the conditions.")
AGE = Column("Age", ".metadata.creationTimestamp", type="date")
FULL_NAME = Column("Name", ".status.name", description="Full resource name.", priority=1)


@dataclass(frozen=True)
class Kind:
    """One custom resource kind."""

    kind: str
    plural: Plural
    short_names: tuple[str, ...]
    spec: type[GraftModel]
    status: type[StatusBase]
    description: str
    namespaced: bool = True
    columns: tuple[Column, ...] = ()
    spec_required: bool = True
    spec_immutable: bool = False
    scale: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.graft.dev"

    def printer_columns(self) -> tuple[Column, ...]:
        return (*self.columns, READY, STATE, AGE, FULL_NAME)


ACCOUNT = Kind(
    kind="Account",
    plural=Plural.ACCOUNTS,
    short_names=("gacct",),
    spec=AccountSpec,
    status=AccountStatus,
    namespaced=False,
    spec_required=False,
    description="A tenant: owns a namespace of the same name; quotas are enforced per account.",
    columns=(Column("Namespace", ".status.namespace", description="The account's namespace."),),
)
USER = Kind(
    kind="User",
    plural=Plural.USERS,
    short_names=("guser",),
    spec=UserSpec,
    status=UserStatus,
    description="An email address with a role in the account whose namespace holds it.",
    columns=(Column("Email", ".spec.email"), Column("Role", ".spec.role")),
)
API_KEY = Kind(
    kind="ApiKey",
    plural=Plural.API_KEYS,
    short_names=("gkey",),
    spec=ApiKeySpec,
    status=ApiKeyStatus,
    description=(
        "A User's key for the gateway: the operator makes it, keeps only its hash in status and "
        "puts the key once into a Secret that only that User can read."
    ),
    columns=(
        Column("User", ".spec.user"),
        Column("Key", ".status.redactedKey", description="The key's public part."),
        Column("Expires", ".status.expiresAt", description="When the key stops working."),
    ),
)
MODEL = Kind(
    kind="Model",
    plural=Plural.MODELS,
    short_names=("gmodel",),
    spec=ModelSpec,
    status=ModelStatus,
    description="Model weights plus metadata: a Base model or a PeftAddon (LoRA adapter) on a base model.",
    columns=(Column("Kind", ".spec.kind"), Column("Base", ".spec.baseModel")),
)
DEPLOYMENT = Kind(
    kind="Deployment",
    plural=Plural.DEPLOYMENTS,
    short_names=("gdeploy",),
    spec=DeploymentSpec,
    status=DeploymentStatus,
    scale=True,
    description="Model-server replicas hosting one base model and, when enabled, up to maxAddons LoRA addons.",
    columns=(
        Column("Base", ".spec.baseModel"),
        Column("Engine", ".spec.engine"),
        Column("Desired", ".spec.replicas", type="integer"),
        Column("Available", ".status.readyReplicas", type="integer"),
        Column(
            "Scaling",
            ".status.autoscaling.reason",
            description="The autoscaler's latest decision.",
            priority=1,
        ),
        Column("Endpoint", ".status.endpoint", priority=1),
    ),
)
DEPLOYED_MODEL = Kind(
    kind="DeployedModel",
    plural=Plural.DEPLOYED_MODELS,
    short_names=("gdm",),
    spec=DeployedModelSpec,
    status=DeployedModelStatus,
    spec_immutable=True,
    description="An addon Model loaded into a Deployment at run time (load-lora), without restarting pods.",
    columns=(
        Column("Model", ".spec.model"),
        Column("Deployment", ".spec.deployment"),
        Column("Loaded", ".status.loadedReplicas", type="integer"),
    ),
)
DATASET = Kind(
    kind="Dataset",
    plural=Plural.DATASETS,
    short_names=("gds",),
    spec=DatasetSpec,
    status=DatasetStatus,
    spec_immutable=True,
    description="An immutable set of training examples (JSONL), identified by its SHA-256 and file name.",
    columns=(
        Column("Format", ".spec.format"),
        Column("Examples", ".status.exampleCount", type="integer"),
        Column("SHA256", ".status.sha256", priority=1),
    ),
)
FINE_TUNING_JOB = Kind(
    kind="FineTuningJob",
    plural=Plural.FINE_TUNING_JOBS,
    short_names=("gftj", "ftj"),
    spec=FineTuningJobSpec,
    status=FineTuningJobStatus,
    spec_immutable=True,
    description="Trains a LoRA addon on a base model from a Dataset, then publishes it as a Model.",
    columns=(
        Column("Base", ".spec.baseModel"),
        Column("Dataset", ".spec.dataset"),
        Column("Output", ".spec.outputModel"),
        Column("Step", ".status.progress.step", type="integer", description="Steps done."),
        Column("Steps", ".status.progress.totalSteps", type="integer", description="Steps in all."),
        Column(
            "Loss", ".status.progress.loss", type="number", description="Loss at the last step."
        ),
        Column(
            "ETA",
            ".status.progress.etaSeconds",
            type="integer",
            description="Seconds to the last step.",
        ),
        Column("Final Loss", ".status.finalLoss", type="number", priority=1),
    ),
)

ALL_KINDS: tuple[Kind, ...] = (
    ACCOUNT,
    USER,
    API_KEY,
    MODEL,
    DEPLOYMENT,
    DEPLOYED_MODEL,
    DATASET,
    FINE_TUNING_JOB,
)

ACCOUNT_PLURALS: tuple[Plural, ...] = tuple(k.plural for k in ALL_KINDS if k.namespaced)
"""The kinds that live in an account's namespace (all but Account)."""
