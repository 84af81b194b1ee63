"""Every GRAFT_* environment variable, in one place (pure; standard library only, so that the
programs in pods can import the names of theirs).

The operator reads its environment once, at start-up (`Settings.from_env`, called by `graft run`),
and passes the one `Settings` object down to whatever needs it; nothing reads the environment
at import time or in the middle of a reconcile. A wrong value stops the operator at start,
with a message that names the variable.

Operator settings (`Settings`):

| variable | default | what |
|---|---|---|
| GRAFT_IMAGE | the Reference engine's image | image of the dataset validator, fetcher and trainer |
| GRAFT_TRAINER_IMAGE | GRAFT_IMAGE | the trainer's own image |
| GRAFT_REFERENCE_IMAGE | ghcr.io/graft-dev/graft:<version> | model servers with `engine: Reference` |
| GRAFT_VLLM_IMAGE | vllm/vllm-openai:v0.11.0 | model servers with `engine: VLLM` |
| GRAFT_JOB_POD_ANNOTATIONS | {} | JSON object of annotations for every Job pod |
| GRAFT_ARTIFACTS_URI | pvc://graft-artifacts | root of trained adapters: pvc://<claim>[/<path>] or file:///<path> |
| GRAFT_STORAGE_SECRET | graft-storage | Secret of the account namespace whose keys fetchers and validators get |
| GRAFT_DATASET_MAX_BYTES | 1 GiB | dataset size limit |
| GRAFT_DATASET_MAX_EXAMPLES | 3,000,000 | dataset example limit |
| GRAFT_RESYNC_SECONDS | 300 | the safety net: every object is reconciled again within this time (at a random point of its second half) without an event; a failed reconcile backs off up to it |
| GRAFT_WORKERS | 8 | reconciles that run at once |
| GRAFT_SERVER_TIMEOUT_SECONDS | 5 | total deadline of a call to a model server, and the longest a reconcile waits for one |
| GRAFT_SERVER_LOAD_TIMEOUT_SECONDS | 120 | total deadline of loading one addon into one replica (in the background) |
| GRAFT_API_TIMEOUT_SECONDS | 30 | deadline of one Kubernetes API request |
| GRAFT_ALLOWED_IMAGES | Graft's and vLLM's repositories | comma-separated images tenants may name in a Deployment's spec.image: a repository (any tag or digest of it) or a prefix ending in "/" |
| GRAFT_OPERATOR_NAMESPACE | graft-system | the operator's own namespace (its key seed Secret; from the downward API) |
| GRAFT_OPERATOR_SERVICE_ACCOUNT | graft-operator | the operator's own ServiceAccount, in GRAFT_OPERATOR_NAMESPACE: what each Account's RoleBinding graft-operator-secrets binds (the chart passes the pod's spec.serviceAccountName) |
| GRAFT_LEASE_SECONDS | 15 | leader election: how long a silent leader's Lease holds off the others |
| GRAFT_STUCK_SECONDS | 300 | liveness fails when every worker has been in one reconcile this long |
| GRAFT_AUTOSCALER_INTERVAL | 5 | seconds between two passes of the autoscaler (scrape the gateways, decide, scale) |
| GRAFT_MIN_SCALE_TO_ZERO_WINDOW | 300 | seconds: the shortest scaleToZeroWindow this installation honours; a Deployment asking for less gets this (and its status says so) |
| GRAFT_GATEWAY_METRICS | (discover) | comma-separated metrics URLs of the gateways (http://<host>:<port>/metrics); unset: the Ready pods labelled app.kubernetes.io/component=gateway in the operator's namespace, on their container port named "metrics" |
| GRAFT_GATEWAY_URL | (none) | the gateway's in-cluster base URL (http://graft-gateway.graft-system.svc:8080); set: trainers report live progress to it (status.progress of a FineTuningJob); unset: no live progress |

The gateway (`graft gateway`) reads GRAFT_UPLOADS_URI (`UPLOADS_ENV`, where dataset uploads go,
file:// or s3://; default GRAFT_ARTIFACTS_URI when that is file://) and the AWS_* variables of
its S3 store (graft.core.s3).

Variables of the programs that run in pods (graft.dataplane), read by that program when it runs:
GRAFT_TERMINATION_MESSAGE_PATH (`TERMINATION_MESSAGE_PATH_ENV`), GRAFT_PVC_ROOT (`PVC_ROOT_ENV`)
GRAFT_CACHE_DIR (`CACHE_DIR_ENV`, where small models are converted and cached), and
VLLM_API_KEY (`SERVER_API_KEY_ENV`, the key a model server requires, as vLLM names it),
GRAFT_PROGRESS_URL and GRAFT_PROGRESS_TOKEN (`PROGRESS_URL_ENV`, `PROGRESS_TOKEN_ENV`: where and
with what token `graft train` reports progress; the operator sets them when GRAFT_GATEWAY_URL is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlparse, urlsplit

from graft import __version__

IMAGE_ENV = "GRAFT_IMAGE"
TRAINER_IMAGE_ENV = "GRAFT_TRAINER_IMAGE"
REFERENCE_IMAGE_ENV = "GRAFT_REFERENCE_IMAGE"
VLLM_IMAGE_ENV = "GRAFT_VLLM_IMAGE"
POD_ANNOTATIONS_ENV = "GRAFT_JOB_POD_ANNOTATIONS"
ARTIFACTS_ENV = "GRAFT_ARTIFACTS_URI"
STORAGE_SECRET_ENV = "GRAFT_STORAGE_SECRET"
MAX_BYTES_ENV = "GRAFT_DATASET_MAX_BYTES"
MAX_EXAMPLES_ENV = "GRAFT_DATASET_MAX_EXAMPLES"
RESYNC_ENV = "GRAFT_RESYNC_SECONDS"
WORKERS_ENV = "GRAFT_WORKERS"
SERVER_TIMEOUT_ENV = "GRAFT_SERVER_TIMEOUT_SECONDS"
SERVER_LOAD_TIMEOUT_ENV = "GRAFT_SERVER_LOAD_TIMEOUT_SECONDS"
API_TIMEOUT_ENV = "GRAFT_API_TIMEOUT_SECONDS"
STUCK_ENV = "GRAFT_STUCK_SECONDS"
LEASE_ENV = "GRAFT_LEASE_SECONDS"
OPERATOR_NAMESPACE_ENV = "GRAFT_OPERATOR_NAMESPACE"
OPERATOR_SERVICE_ACCOUNT_ENV = "GRAFT_OPERATOR_SERVICE_ACCOUNT"
ALLOWED_IMAGES_ENV = "GRAFT_ALLOWED_IMAGES"
AUTOSCALER_INTERVAL_ENV = "GRAFT_AUTOSCALER_INTERVAL"
MIN_SCALE_TO_ZERO_WINDOW_ENV = "GRAFT_MIN_SCALE_TO_ZERO_WINDOW"
GATEWAY_METRICS_ENV = "GRAFT_GATEWAY_METRICS"
GATEWAY_URL_ENV = "GRAFT_GATEWAY_URL"
UPLOADS_ENV = "GRAFT_UPLOADS_URI"
"""The gateway's (`graft gateway --uploads`): where dataset uploads go, file:// or s3://."""

TERMINATION_MESSAGE_PATH_ENV = "GRAFT_TERMINATION_MESSAGE_PATH"
PVC_ROOT_ENV = "GRAFT_PVC_ROOT"
CACHE_DIR_ENV = "GRAFT_CACHE_DIR"
PROGRESS_URL_ENV = "GRAFT_PROGRESS_URL"
PROGRESS_TOKEN_ENV = "GRAFT_PROGRESS_TOKEN"
SERVER_API_KEY_ENV = "VLLM_API_KEY"
"""The key model servers require on /v1/ (vLLM reads this variable too); from a Secret."""

# Graft's own images, built by `make images` (hack/build-images.py reads them from here).
IMAGE_REPOSITORY = "ghcr.io/graft-dev"
DEFAULT_REFERENCE_IMAGE = f"{IMAGE_REPOSITORY}/graft:{__version__}"
DEFAULT_OPERATOR_IMAGE = f"{IMAGE_REPOSITORY}/graft-operator:{__version__}"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_ARTIFACTS_URI = "pvc://graft-artifacts"
DEFAULT_STORAGE_SECRET = "graft-storage"
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
DEFAULT_MAX_EXAMPLES = 3_000_000
MIN_EXAMPLES = 3
DEFAULT_RESYNC_SECONDS = 300.0
DEFAULT_WORKERS = 8
DEFAULT_SERVER_TIMEOUT_SECONDS = 5.0
DEFAULT_SERVER_LOAD_TIMEOUT_SECONDS = 120.0
DEFAULT_API_TIMEOUT_SECONDS = 30.0
DEFAULT_STUCK_SECONDS = 300.0
DEFAULT_LEASE_SECONDS = 15
DEFAULT_OPERATOR_NAMESPACE = "graft-system"
DEFAULT_OPERATOR_SERVICE_ACCOUNT = "graft-operator"
"""The chart's ServiceAccount for release `graft` (graft.gen.rbac.OPERATOR_NAME)."""
DEFAULT_AUTOSCALER_INTERVAL = 5.0
DEFAULT_MIN_SCALE_TO_ZERO_WINDOW = 300.0
"""Starting a model server takes minutes; flapping to zero and back faster than that would make
every quiet spell cost the next user a cold start. A policy of the installation, not a rule of
the API: a test cluster lowers it."""


N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """The operator's environment is wrong; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """How this operator process builds what it creates; one per process."""

    image: str = DEFAULT_REFERENCE_IMAGE
    trainer_image: str = DEFAULT_REFERENCE_IMAGE
    reference_image: str = DEFAULT_REFERENCE_IMAGE
    vllm_image: str = DEFAULT_VLLM_IMAGE
    pod_annotations: dict[str, str] = field(default_factory=dict)
    artifacts_uri: str = DEFAULT_ARTIFACTS_URI
    storage_secret: str = DEFAULT_STORAGE_SECRET
    dataset_max_bytes: int = DEFAULT_MAX_BYTES
    dataset_max_examples: int = DEFAULT_MAX_EXAMPLES
    dataset_min_examples: int = MIN_EXAMPLES
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    workers: int = DEFAULT_WORKERS
    server_timeout: float = DEFAULT_SERVER_TIMEOUT_SECONDS
    server_load_timeout: float = DEFAULT_SERVER_LOAD_TIMEOUT_SECONDS
    api_timeout: float = DEFAULT_API_TIMEOUT_SECONDS
    stuck_seconds: float = DEFAULT_STUCK_SECONDS
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    operator_service_account: str = DEFAULT_OPERATOR_SERVICE_ACCOUNT
    """The operator's ServiceAccount (in operator_namespace): the subject that each Account
    binds its namespace's Secrets to."""
    allowed_images: tuple[str, ...] = ()
    """Beyond the repositories of the images above, which are always allowed."""
    autoscaler_interval: float = DEFAULT_AUTOSCALER_INTERVAL
    min_scale_to_zero_window: float = DEFAULT_MIN_SCALE_TO_ZERO_WINDOW
    gateway_metrics: tuple[str, ...] = ()
    """Where the gateways' metrics are; empty: find the gateway pods."""
    gateway_url: str = ""
    """The gateway's base URL as trainer pods reach it; empty: trainers report no progress."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings from the variables in the table above; ConfigError names a bad one."""
        reference = env.get(REFERENCE_IMAGE_ENV) or DEFAULT_REFERENCE_IMAGE
        image = env.get(IMAGE_ENV) or reference
        annotations_text = env.get(POD_ANNOTATIONS_ENV) or "{}"
        try:
            annotations = json.loads(annotations_text)
        except ValueError as exc:
            raise ConfigError(f"{POD_ANNOTATIONS_ENV} is not JSON: {exc}") from None
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ConfigError(
                f'{POD_ANNOTATIONS_ENV} must be a JSON object of strings, e.g. {{"key": "value"}}'
            )
        artifacts = (env.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS_URI).rstrip("/")
        parsed = urlparse(artifacts)
        if not (
            (parsed.scheme == "pvc" and parsed.netloc)
            or (parsed.scheme == "file" and parsed.path.startswith("/") and not parsed.netloc)
        ):
            raise ConfigError(
                f"{ARTIFACTS_ENV}={artifacts!r}: trainers write adapters to "
                "pvc://<claim>[/<path>] or file:///<path>"
            )
        return cls(
            image=image,
            trainer_image=env.get(TRAINER_IMAGE_ENV) or image,
            reference_image=reference,
            vllm_image=env.get(VLLM_IMAGE_ENV) or DEFAULT_VLLM_IMAGE,
            pod_annotations=dict(sorted(annotations.items())),
            artifacts_uri=artifacts,
            storage_secret=env.get(STORAGE_SECRET_ENV) or DEFAULT_STORAGE_SECRET,
            dataset_max_bytes=_positive(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES, int),
            dataset_max_examples=_positive(env, MAX_EXAMPLES_ENV, DEFAULT_MAX_EXAMPLES, int),
            resync_seconds=_positive(env, RESYNC_ENV, DEFAULT_RESYNC_SECONDS, float),
            workers=_positive(env, WORKERS_ENV, DEFAULT_WORKERS, int),
            server_timeout=_positive(
                env, SERVER_TIMEOUT_ENV, DEFAULT_SERVER_TIMEOUT_SECONDS, float
            ),
            server_load_timeout=_positive(
                env, SERVER_LOAD_TIMEOUT_ENV, DEFAULT_SERVER_LOAD_TIMEOUT_SECONDS, float
            ),
            api_timeout=_positive(env, API_TIMEOUT_ENV, DEFAULT_API_TIMEOUT_SECONDS, float),
            stuck_seconds=_positive(env, STUCK_ENV, DEFAULT_STUCK_SECONDS, float),
            lease_seconds=_positive(env, LEASE_ENV, DEFAULT_LEASE_SECONDS, int),
            operator_namespace=env.get(OPERATOR_NAMESPACE_ENV) or DEFAULT_OPERATOR_NAMESPACE,
            operator_service_account=env.get(OPERATOR_SERVICE_ACCOUNT_ENV)
            or DEFAULT_OPERATOR_SERVICE_ACCOUNT,
            allowed_images=_allowed_images(env.get(ALLOWED_IMAGES_ENV) or ""),
            autoscaler_interval=_positive(
                env, AUTOSCALER_INTERVAL_ENV, DEFAULT_AUTOSCALER_INTERVAL, float
            ),
            min_scale_to_zero_window=_positive(
                env, MIN_SCALE_TO_ZERO_WINDOW_ENV, DEFAULT_MIN_SCALE_TO_ZERO_WINDOW, float
            ),
            gateway_metrics=_gateway_metrics(env.get(GATEWAY_METRICS_ENV) or ""),
            gateway_url=_gateway_url(env.get(GATEWAY_URL_ENV) or ""),
        )

    def artifacts_claim(self) -> str | None:
        """The claim trained adapters go to, when GRAFT_ARTIFACTS_URI is a pvc:// URI."""
        parsed = urlparse(self.artifacts_uri)
        return parsed.netloc if parsed.scheme == "pvc" else None

    def image_allowed(self, image: str) -> bool:
        """Whether a tenant may run `image` (a Deployment's spec.image): it is in one of the
        operator's own images' repositories, or in GRAFT_ALLOWED_IMAGES."""
        own = (self.image, self.trainer_image, self.reference_image, self.vllm_image)
        return any(
            _in_repository(image, entry)
            for entry in (*(repository(i) for i in own), *self.allowed_images)
        )

    def engine_image(self, engine: str) -> str:
        """The model-server image of an engine (graft.api.serving.Engine, a StrEnum), when the
        Deployment does not name one."""
        return self.vllm_image if engine == "VLLM" else self.reference_image


def repository(image: str) -> str:
    """An image reference without its tag or digest: registry/path/name."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _in_repository(image: str, entry: str) -> bool:
    if entry.endswith("/"):
        return image.startswith(entry) and ".." not in image
    return image == entry or repository(image) == entry


def _allowed_images(text: str) -> tuple[str, ...]:
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    for entry in entries:
        if any(c.isspace() for c in entry) or entry in ("/",):
            raise ConfigError(f"{ALLOWED_IMAGES_ENV}: {entry!r} is not an image or prefix")
    return entries


def _gateway_metrics(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        parts = urlsplit(url)
        try:
            # .port raises ValueError for a port that is not a number.
            valid = parts.scheme == "http" and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                f"{GATEWAY_METRICS_ENV}: {url!r} is not an http://<host>:<port>/<path> URL"
            )
    return urls


def _gateway_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    try:
        valid = (
            parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        )
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise ConfigError(
            f"{GATEWAY_URL_ENV}: {text!r} is not an http(s)://<host>[:<port>] URL (the gateway's "
            "Service, e.g. http://graft-gateway.graft-system.svc:8080)"
        )
    return url


def _positive(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    """A positive number from the environment, or the default when the variable is unset."""
    text = env.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={text!r} is not {what}") from None
    if not value > 0:
        raise ConfigError(f"{name}={text!r} must be positive")
    return value
