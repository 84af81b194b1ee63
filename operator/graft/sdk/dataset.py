"""`Dataset`: training data found by its signature (sha256 of the bytes, file name) or created.

`Dataset.from_file(path)` and `Dataset.from_list(examples)` check the data locally first, with
the same parser the validation Job runs (graft.api.dataformat): every problem, with its line
number, is in the DatasetInvalid raised before anything is created or uploaded.

`.sync()` (a fine-tuning job calls it when it needs the Dataset):

1. A Dataset of the account with the signature labels (graft.core.signatures; the SDK sets them
   at creation, the operator once validation read the data; status.sha256 and status.filename
   confirm them once validated) is re-used: waited for when still validating, its condition
   raised when it failed.
2. Otherwise a Dataset is created. Its ID comes from the file name (graft.sdk.ids); when that ID
   is taken by a Dataset of other data, '-' and 8 hex digits of the signature are appended.
   Data of at most 900 KiB goes in a ConfigMap of the same name (members may create them), which
   the Dataset then owns (it goes with it); more is uploaded through the gateway and named by the
   `uri` the gateway returns.
3. It waits for Ready, or raises DatasetInvalid with the operator's line-numbered problems.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from graft.api.common import ConditionStatus
from graft.api.dataformat import DatasetReport, parse_jsonl, read_dataset
from graft.core import keys
from graft.core.signatures import signature_labels, signature_selector
from graft.sdk import ids
from graft.sdk.connection import AccountBound, Connection, Obj
from graft.sdk.errors import Conflict, DatasetFailed, DatasetInvalid, Timeout
from graft.sdk.upload import Uploader

PLURAL = "datasets"
CONFIG_MAP_LIMIT = 900 * 1024
"""A ConfigMap holds at most 1 MiB in all (keys, metadata): data up to 900 KiB fits with room."""
DEFAULT_FILENAME = "dataset.jsonl"
_CONFIG_MAP_KEY = re.compile(r"[^-._a-zA-Z0-9]+")
POLL = 1.0


def condition(obj: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def is_true(obj: Mapping[str, Any] | None, type_: str) -> bool:
    return (condition(obj, type_) or {}).get("status") == ConditionStatus.TRUE.value


def config_map_key(filename: str) -> str:
    """A ConfigMap key for the file (keys allow only -._a-zA-Z0-9)."""
    key = _CONFIG_MAP_KEY.sub("-", Path(filename).name).strip("-.") or DEFAULT_FILENAME
    return key[:253]


class Dataset(AccountBound):
    """JSONL training examples, identified by (sha256 of the data, file name)."""

    def __init__(
        self,
        *,
        filename: str,
        report: DatasetReport,
        path: Path | None = None,
        data: bytes | None = None,
        account: str | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.filename = Path(filename).name
        self.report = report
        self.path = path
        self._data = data
        self._account = account
        self._connection = connection
        self.id: str | None = None
        self.requested_id: str | None = None
        """An ID asked for (`graft create dataset ID`) instead of one derived from the file name."""
        self.obj: Obj | None = None

    # --- Construction --------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        account: str | None = None,
        connection: Connection | None = None,
    ) -> Dataset:
        """The data of a JSONL file; its file name is half of the signature."""
        p = Path(path)
        try:
            report = read_dataset(p)
        except OSError as exc:
            raise DatasetInvalid(f"cannot read {p}: {exc}", reason="Unreadable") from None
        return cls(filename=p.name, report=report, path=p, account=account, connection=connection)

    @classmethod
    def from_list(
        cls,
        examples: Iterable[Mapping[str, Any]],
        *,
        filename: str = DEFAULT_FILENAME,
        account: str | None = None,
        connection: Connection | None = None,
    ) -> Dataset:
        """Examples as dicts ({"messages": [...]} or {"prompt", "completion"}), one JSON line
        each (compact, keys in the given order: the same list gives the same sha256)."""
        data = "".join(
            json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in examples
        ).encode()
        return cls(
            filename=filename,
            report=parse_jsonl(data),
            data=data,
            account=account,
            connection=connection,
        )

    # --- Identity ------------------------------------------------------------------------------

    @property
    def sha256(self) -> str:
        return self.report.sha256

    @property
    def size(self) -> int:
        return self.report.size_bytes

    @property
    def signature(self) -> tuple[str, str]:
        return self.sha256, self.filename

    @property
    def full_name(self) -> str:
        if self.id is None:
            self.sync()
        assert self.id is not None
        return self.connection.full_name(PLURAL, self.id)

    def __repr__(self) -> str:
        return f"Dataset(filename={self.filename!r}, sha256={self.sha256[:12]}..., id={self.id!r})"

    def validate(self) -> DatasetReport:
        """Raise DatasetInvalid with every problem (and its line number) unless the data is valid."""
        if not self.report.ok:
            where = str(self.path) if self.path else self.filename
            raise DatasetInvalid(
                self.report.describe_errors(where),
                problems=[str(e) for e in self.report.errors],
            )
        return self.report

    def content(self) -> bytes:
        """The data itself (read from the file once, when a ConfigMap or an upload needs it)."""
        if self._data is None:
            assert self.path is not None
            self._data = self.path.read_bytes()
        return self._data

    # --- Sync --------------------------------------------------------------------------------

    def find(self) -> Obj | None:
        """The account's Dataset with this signature, if there is one (a Ready one first)."""
        found = []
        for obj in self.connection.list(PLURAL, signature_selector(*self.signature)):
            status = obj.get("status") or {}
            if status.get("sha256") and status.get("sha256") != self.sha256:
                continue
            if status.get("filename") and status.get("filename") != self.filename:
                continue
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                continue
            found.append(obj)
        found.sort(key=lambda o: (not is_true(o, "Ready"), o["metadata"]["name"]))
        return found[0] if found else None

    def sync(self, *, timeout: float = 600.0, wait: bool = True) -> Dataset:
        """Re-use the Dataset with this signature or create it; return once it is Ready (at
        once with wait=False)."""
        self.validate()
        obj = self._find_requested() if self.requested_id else self.find()
        if obj is None:
            obj = self._create()
        self.obj = obj
        self.id = obj["metadata"]["name"]
        return self.wait_ready(timeout=timeout) if wait else self

    def _find_requested(self) -> Obj | None:
        """The Dataset of the ID asked for (graft create dataset ID): re-used when it holds this
        data under this file name, a Conflict when it holds other data."""
        assert self.requested_id is not None
        obj = self.connection.get(PLURAL, self.requested_id)
        if obj is None:
            return None
        labels = (obj.get("metadata") or {}).get("labels") or {}
        status = obj.get("status") or {}
        wanted = signature_labels(*self.signature)
        same = (
            all(labels.get(k) == v for k, v in wanted.items())
            and status.get("sha256", self.sha256) == self.sha256
        )
        if not same:
            raise Conflict(
                f"Dataset {self.requested_id} already exists with other data or another file "
                "name; Datasets are immutable: choose another ID",
                resource=self.connection.full_name(PLURAL, self.requested_id),
            )
        return obj

    def _choose_id(self) -> str:
        if self.requested_id:
            return self.requested_id
        signature = ids.signature_hash(*self.signature)
        for candidate in ids.candidates(ids.dataset_id(self.filename), signature):
            existing = self.connection.get(PLURAL, candidate)
            if existing is None:
                return candidate
        raise Conflict(
            f"Datasets {ids.dataset_id(self.filename)!r} and {candidate!r} already exist with "
            "other data; rename the file",
            resource=self.connection.full_name(PLURAL, candidate),
        )

    def _create(self) -> Obj:
        conn = self.connection
        id_ = self._choose_id()
        labels = signature_labels(*self.signature)
        source: dict[str, Any]
        config_map = None
        if self.size <= CONFIG_MAP_LIMIT:
            config_map = self._config_map(id_)
            source = {"configMap": {"name": id_, "key": config_map_key(self.filename)}}
        else:
            source = {"uri": self._upload()}
        body = {
            "metadata": {"name": id_, "labels": labels},
            "spec": {
                "source": source,
                "format": self.report.format or "chat",
                "filename": self.filename,
            },
        }
        obj = conn.create(PLURAL, body)
        if config_map is not None:
            owner = {
                "apiVersion": keys.API_VERSION,
                "kind": "Dataset",
                "name": id_,
                "uid": obj["metadata"]["uid"],
            }
            conn.patch_config_map(id_, {"metadata": {"ownerReferences": [owner]}})
        return obj

    def _config_map(self, name: str) -> Obj:
        """The ConfigMap holding the data: created, or re-used when a previous run left it."""
        conn = self.connection
        key = config_map_key(self.filename)
        text = self.content().decode("utf-8")
        existing = conn.get_config_map(name)
        if existing is not None:
            if (existing.get("data") or {}).get(key) == text:
                return existing
            if (existing.get("metadata") or {}).get("ownerReferences"):
                raise Conflict(
                    f"ConfigMap {name} already holds other data for another owner; delete it or "
                    "rename the file"
                )
            return conn.patch_config_map(name, {"data": {key: text}})
        return conn.create_config_map(
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        keys.MANAGED_BY: keys.SDK_FIELD_MANAGER,
                        **signature_labels(*self.signature),
                    },
                },
                "data": {key: text},
            }
        )

    def _upload(self) -> str:
        conn = self.connection
        with Uploader(conn.gateway_url, conn.api_key, conn.account) as uploader:
            if self.path is not None:
                state = uploader.upload(self.path, file_name=self.filename)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / self.filename
                    path.write_bytes(self.content())
                    state = uploader.upload(path, file_name=self.filename)
        if not state.uri:
            raise DatasetFailed(
                f"the gateway completed upload {state.id} but named no uri for it",
                reason="UploadFailed",
            )
        return state.uri

    def wait_ready(self, *, timeout: float = 600.0) -> Dataset:
        """Wait until the Dataset is Ready; raise DatasetInvalid/DatasetFailed when it failed."""
        assert self.id is not None
        resource = self.connection.full_name(PLURAL, self.id)
        deadline = time.monotonic() + timeout
        while True:
            obj = self.connection.get(PLURAL, self.id) or self.obj
            self.obj = obj
            if is_true(obj, "Ready"):
                return self
            failed = condition(obj, "Failed")
            if failed and failed.get("status") == ConditionStatus.TRUE.value:
                raise dataset_failure(obj or {}, resource)
            if time.monotonic() >= deadline:
                ready = condition(obj, "Ready") or {}
                raise Timeout(
                    f"Dataset not Ready after {timeout:g}s: {ready.get('reason', 'no status')}: "
                    f"{ready.get('message', '')}; is the operator running?",
                    resource=resource,
                )
            time.sleep(POLL)


def dataset_failure(obj: Mapping[str, Any], resource: str) -> DatasetInvalid | DatasetFailed:
    """The exception of a failed Dataset: DatasetInvalid with its problems when the data was
    at fault, DatasetFailed (reason, message) otherwise."""
    failed = condition(obj, "Failed") or {}
    reason = str(failed.get("reason") or "Failed")
    message = str(failed.get("message") or "")
    errors = [str(e) for e in ((obj.get("status") or {}).get("errors") or [])]
    again = (
        f"\nA Dataset is immutable and re-used by its signature: fix the cause, then delete "
        f"{resource} (kubectl delete datasets.graft.dev {resource.rsplit('/', 1)[-1]}) to "
        "create it again"
    )
    if reason == "InvalidDataset" or errors:
        return DatasetInvalid(
            (message or "\n".join(errors)) + again,
            problems=errors,
            reason=reason,
            resource=resource,
        )
    return DatasetFailed(f"{reason}: {message}{again}", reason=reason, resource=resource)
