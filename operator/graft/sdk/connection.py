"""Where the SDK goes and as whom: the kubeconfig, the account, the gateway and its API key.

The SDK runs with the user's own credentials, as kubectl finds them (KUBECONFIG, else
~/.kube/config; the current context unless one is named; an `as:` impersonation in the user
entry is honoured as kubectl does), which typically hold only their
account's member role: it reads and writes the Graft kinds and ConfigMaps of one namespace, never
anything cluster-wide. The account is `account=`, else GRAFT_ACCOUNT, else the context's
namespace. The gateway is GRAFT_GATEWAY_URL with GRAFT_API_KEY (or the arguments).

Every request to the API server has a timeout (`timeout`, 30 s by default) and every error comes
back as a GraftError (graft.sdk.errors), never as the client's ApiException.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from graft.api.common import ID_RULE
from graft.core import keys
from graft.core.names import full_name, is_id
from graft.sdk.errors import ConfigError, GraftError, Unavailable, translate

Obj = dict[str, Any]
T = TypeVar("T")

ACCOUNT_ENV = "GRAFT_ACCOUNT"
GATEWAY_ENV = "GRAFT_GATEWAY_URL"
API_KEY_ENV = "GRAFT_API_KEY"
DEFAULT_TIMEOUT = 30.0

_KINDS = {
    "models": "Model",
    "deployments": "Deployment",
    "deployedmodels": "DeployedModel",
    "datasets": "Dataset",
    "finetuningjobs": "FineTuningJob",
    "users": "User",
    "apikeys": "ApiKey",
}


def context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace of the kubeconfig's context (the current one unless named), if it sets one."""
    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    if not chosen:
        return None
    namespace = (chosen.get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def _kubeconfig_files(kubeconfig: str | None) -> list[Path]:
    if kubeconfig:
        return [Path(kubeconfig)]
    listed = os.environ.get("KUBECONFIG")
    if listed:
        return [Path(p) for p in listed.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def impersonation(kubeconfig: str | None, context: str | None) -> dict[str, str]:
    """The Impersonate-* headers of the context's user entry (`as:`, one `as-groups:` entry),
    as kubectl sends them: the client python library ignores these fields."""
    documents = []
    for path in _kubeconfig_files(kubeconfig):
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            documents.append(loaded)
    chosen = context or next(
        (d["current-context"] for d in documents if d.get("current-context")), None
    )
    contexts = [c for d in documents for c in d.get("contexts") or [] if isinstance(c, dict)]
    entry = next((c for c in contexts if c.get("name") == chosen), None)
    user_name = ((entry or {}).get("context") or {}).get("user")
    users = [u for d in documents for u in d.get("users") or [] if isinstance(u, dict)]
    user = next((u.get("user") or {} for u in users if u.get("name") == user_name), {})
    headers = {}
    if user.get("as"):
        headers["Impersonate-User"] = str(user["as"])
        groups = user.get("as-groups") or []
        if len(groups) > 1:
            raise ConfigError(
                "your kubeconfig impersonates several groups (as-groups); the SDK supports one"
            )
        if groups:
            headers["Impersonate-Group"] = str(groups[0])
    return headers


def resolve_account(
    account: str | None, *, kubeconfig: str | None = None, context: str | None = None
) -> str:
    """`account`, else $GRAFT_ACCOUNT, else the kubeconfig context's namespace."""
    chosen = account or os.environ.get(ACCOUNT_ENV) or context_namespace(kubeconfig, context)
    if not chosen:
        raise ConfigError(
            "no account: pass account=..., set GRAFT_ACCOUNT, or set a namespace in your "
            "kubeconfig context (kubectl config set-context --current --namespace=<account>)"
        )
    if not is_id(chosen):
        raise ConfigError(f"account {chosen!r} {ID_RULE}")
    return chosen


class Connection:
    """The API server (as the user) and the gateway (with the user's API key) for one account."""

    def __init__(
        self,
        account: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        gateway_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        api_client: client.ApiClient | None = None,
    ) -> None:
        self.account = resolve_account(account, kubeconfig=kubeconfig, context=context)
        self.timeout = timeout
        self._gateway_url = gateway_url or os.environ.get(GATEWAY_ENV) or None
        self._api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._kubeconfig = kubeconfig
        self._context = context
        self._api_client = api_client
        self._lock = threading.Lock()

    def for_account(self, account: str) -> Connection:
        """The same credentials and gateway, in another account (a full name's)."""
        if account == self.account:
            return self
        return Connection(
            account,
            kubeconfig=self._kubeconfig,
            context=self._context,
            gateway_url=self._gateway_url,
            api_key=self._api_key,
            timeout=self.timeout,
            api_client=self.api_client,
        )

    # --- The API server ------------------------------------------------------------------------

    @property
    def api_client(self) -> client.ApiClient:
        with self._lock:
            if self._api_client is None:
                try:
                    api_client = config.new_client_from_config(
                        config_file=self._kubeconfig, context=self._context
                    )
                except (config.ConfigException, OSError) as exc:
                    raise ConfigError(
                        f"cannot read your kubeconfig ({exc}); set KUBECONFIG or pass "
                        "kubeconfig=... (the SDK uses the credentials kubectl would)"
                    ) from exc
                for header, value in impersonation(self._kubeconfig, self._context).items():
                    api_client.set_default_header(header, value)
                self._api_client = api_client
            return self._api_client

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    def full_name(self, plural: str, name: str) -> str:
        return full_name(self.account, plural, name)

    def call(self, action: str, resource: str | None, fn: Callable[[], T]) -> T:
        """Run one API request; its errors become GraftErrors that name `action`."""
        try:
            return fn()
        except ApiException as exc:
            raise translate(
                exc.status or 0, exc.body, action=action, resource=resource, account=self.account
            ) from None
        except (Urllib3Error, OSError) as exc:
            raise Unavailable(
                f"cannot reach the API server to {action}: {exc}; check your kubeconfig and "
                "that the cluster is up",
                resource=resource,
            ) from None

    def _plain(self, obj: Any) -> Obj:
        return obj if isinstance(obj, dict) else self.api_client.sanitize_for_serialization(obj)

    def get(self, plural: str, name: str) -> Obj | None:
        """The Graft object, or None when there is none."""
        resource = self.full_name(plural, name)
        try:
            return self.call(
                f"read {_KINDS.get(plural, plural)} {name}",
                resource,
                lambda: self._plain(
                    self.custom.get_namespaced_custom_object(
                        keys.GROUP,
                        keys.VERSION,
                        self.account,
                        plural,
                        name,
                        _request_timeout=self.timeout,
                    )
                ),
            )
        except GraftError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    def list(self, plural: str, selector: str | None = None) -> list[Obj]:
        body = self.call(
            f"list {plural}",
            None,
            lambda: self._plain(
                self.custom.list_namespaced_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    self.account,
                    plural,
                    label_selector=selector or "",
                    _request_timeout=self.timeout,
                )
            ),
        )
        items: list[Obj] = body.get("items") or []
        return items

    def create(self, plural: str, body: Mapping[str, Any]) -> Obj:
        name = body["metadata"]["name"]
        obj = {"apiVersion": keys.API_VERSION, "kind": _KINDS[plural], **body}
        obj["metadata"] = {**body["metadata"], "namespace": self.account}
        return self.call(
            f"create {_KINDS[plural]} {name}",
            self.full_name(plural, name),
            lambda: self._plain(
                self.custom.create_namespaced_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    self.account,
                    plural,
                    obj,
                    field_manager=keys.SDK_FIELD_MANAGER,
                    _request_timeout=self.timeout,
                )
            ),
        )

    def apply(self, plural: str, body: Mapping[str, Any]) -> Obj:
        """Server-side apply as field manager graft-sdk: creates or updates, never duplicates."""
        name = body["metadata"]["name"]
        obj = {"apiVersion": keys.API_VERSION, "kind": _KINDS[plural], **body}
        obj["metadata"] = {**body["metadata"], "namespace": self.account}
        return self.call(
            f"apply {_KINDS[plural]} {name}",
            self.full_name(plural, name),
            lambda: self._plain(
                self.custom.patch_namespaced_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    self.account,
                    plural,
                    name,
                    obj,
                    field_manager=keys.SDK_FIELD_MANAGER,
                    force=True,
                    _content_type="application/apply-patch+yaml",
                    _request_timeout=self.timeout,
                )
            ),
        )

    def delete(self, plural: str, name: str) -> bool:
        """Delete the object; False when it was already gone."""
        try:
            self.call(
                f"delete {_KINDS.get(plural, plural)} {name}",
                self.full_name(plural, name),
                lambda: self.custom.delete_namespaced_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    self.account,
                    plural,
                    name,
                    _request_timeout=self.timeout,
                ),
            )
        except GraftError as exc:
            if exc.reason == "NotFound":
                return False
            raise
        return True

    def scale(self, name: str, replicas: int) -> Obj:
        """Set a Deployment's replicas through its /scale subresource (as kubectl scale)."""
        return self.call(
            f"scale Deployment {name}",
            self.full_name("deployments", name),
            lambda: self._plain(
                self.custom.patch_namespaced_custom_object_scale(
                    keys.GROUP,
                    keys.VERSION,
                    self.account,
                    "deployments",
                    name,
                    {"spec": {"replicas": replicas}},
                    field_manager=keys.SDK_FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                    _request_timeout=self.timeout,
                )
            ),
        )

    # --- ConfigMaps (a small Dataset's data) --------------------------------------------------

    def get_config_map(self, name: str) -> Obj | None:
        try:
            return self.call(
                f"read ConfigMap {name}",
                None,
                lambda: self._plain(
                    self.core.read_namespaced_config_map(
                        name, self.account, _request_timeout=self.timeout
                    )
                ),
            )
        except GraftError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    def create_config_map(self, body: Obj) -> Obj:
        body = {"apiVersion": "v1", "kind": "ConfigMap", **body}
        body["metadata"] = {**body["metadata"], "namespace": self.account}
        return self.call(
            f"create ConfigMap {body['metadata']['name']}",
            None,
            lambda: self._plain(
                self.core.create_namespaced_config_map(
                    self.account,
                    body,
                    field_manager=keys.SDK_FIELD_MANAGER,
                    _request_timeout=self.timeout,
                )
            ),
        )

    def patch_config_map(self, name: str, patch: Obj) -> Obj:
        return self.call(
            f"update ConfigMap {name}",
            None,
            lambda: self._plain(
                self.core.patch_namespaced_config_map(
                    name,
                    self.account,
                    patch,
                    field_manager=keys.SDK_FIELD_MANAGER,
                    _request_timeout=self.timeout,
                )
            ),
        )

    def delete_config_map(self, name: str) -> None:
        try:
            self.call(
                f"delete ConfigMap {name}",
                None,
                lambda: self.core.delete_namespaced_config_map(
                    name, self.account, _request_timeout=self.timeout
                ),
            )
        except GraftError as exc:
            if exc.reason != "NotFound":
                raise

    # --- The gateway ---------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        if not self._gateway_url:
            raise ConfigError(
                "no gateway: set GRAFT_GATEWAY_URL (e.g. http://127.0.0.1:8080) or pass "
                "gateway_url=..."
            )
        return self._gateway_url.rstrip("/")

    def dashboard_url(self, kind: str | None = None, name: str | None = None) -> str:
        """The gateway's read-only dashboard page of this account, or of one object of it
        (kind: deployments, fine-tuning-jobs, datasets); it asks for an API key of the account
        in the browser (docs/gateway.md, "Dashboard")."""
        url = f"{self.gateway_url}/dashboard/accounts/{quote(self.account, safe='')}"
        if kind is not None and name is not None:
            url += f"/{kind}/{quote(name, safe='')}"
        return url

    @property
    def api_key(self) -> str:
        if not self._api_key:
            raise ConfigError(
                "no API key: set GRAFT_API_KEY to a key of your User in this account (an ApiKey's "
                "Secret holds it) or pass api_key=..."
            )
        return self._api_key

    def openai(self) -> Any:
        """An `openai.OpenAI` client on the gateway with the caller's key (openai is optional:
        install graft-operator[sdk])."""
        try:
            import openai
        except ImportError as exc:
            raise ConfigError(
                "the openai package is missing: pip install 'graft-operator[sdk]'"
            ) from exc
        return openai.OpenAI(
            base_url=f"{self.gateway_url}/v1",
            api_key=self.api_key,
            timeout=max(self.timeout, 120.0),
        )


_DEFAULTS: dict[tuple[str | None, ...], Connection] = {}
_DEFAULTS_LOCK = threading.Lock()


def connect(account: str | None = None, connection: Connection | None = None) -> Connection:
    """`connection` when given, else one shared Connection per account from the environment."""
    if connection is not None:
        if account and account != connection.account:
            raise ConfigError(
                f"account {account!r} differs from the connection's ({connection.account!r})"
            )
        return connection
    key = (
        account or os.environ.get(ACCOUNT_ENV),
        os.environ.get("KUBECONFIG"),
        os.environ.get(GATEWAY_ENV),
        os.environ.get(API_KEY_ENV),
    )
    with _DEFAULTS_LOCK:
        if key not in _DEFAULTS:
            _DEFAULTS[key] = Connection(account)
        return _DEFAULTS[key]


class AccountBound:
    """A resource of one account that connects on first use: `_account` (None: from the
    environment) and `_connection` (None until needed) are set by the resource's constructor."""

    _account: str | None
    _connection: Connection | None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = connect(self._account)
        return self._connection

    @property
    def account(self) -> str:
        return self.connection.account
