"""`SupervisedFineTuningJob`: a Graft FineTuningJob found by its signature (name, model).

Re-running a script finds the job it created before (labels graft.dev/sdk-job and
graft.dev/sdk-model, graft.core.signatures) and re-uses it and its output model: no second
training. A new `name` or another model trains again. The FineTuningJob's ID and its output
model's ID come from `name` (graft.sdk.ids), with a short hash suffix when taken by another
signature.

`.wait()` shows the job's progress (graft.sdk.progress) from status.progress, and raises
FineTuningJobFailed with the condition's reason and message when it fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from graft.api.common import ConditionStatus
from graft.core.names import InvalidReference, parse_ref
from graft.core.signatures import job_signature_labels, selector
from graft.sdk import ids
from graft.sdk.connection import AccountBound, Connection, Obj
from graft.sdk.dataset import Dataset, condition, is_true
from graft.sdk.errors import ConfigError, Conflict, FineTuningJobFailed, NotFound, Timeout
from graft.sdk.llm import LLM
from graft.sdk.progress import ProgressPrinter, Stream

PLURAL = "finetuningjobs"
POLL = 2.0
HYPERPARAMETERS = {
    "epochs": "epochs",
    "learning_rate": "learningRate",
    "lora_rank": "loraRank",
    "lora_alpha": "loraAlpha",
    "batch_size": "batchSize",
    "max_context_length": "maxContextLength",
    "seed": "seed",
    "max_steps": "maxSteps",
    "target_modules": "targetModules",
}


def hyperparameters_wire(values: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters given in Python's names, as spec.hyperparameters (unset ones left out)."""
    unknown = sorted(set(values) - set(HYPERPARAMETERS))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameters {', '.join(unknown)}; known: {', '.join(HYPERPARAMETERS)}"
        )
    return {HYPERPARAMETERS[k]: v for k, v in values.items() if v is not None}


class SupervisedFineTuningJob(AccountBound):
    """Train a LoRA addon of `model` on `dataset` (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        model: str | LLM,
        dataset: Dataset | str,
        *,
        epochs: int | None = None,
        learning_rate: float | None = None,
        lora_rank: int | None = None,
        account: str | None = None,
        connection: Connection | None = None,
        **hyperparameters: Any,
    ) -> None:
        if not name:
            raise ConfigError("a fine-tuning job needs name=...: with the model, its signature")
        self.name = name
        self.llm = model if isinstance(model, LLM) else None
        self.model = model.model if isinstance(model, LLM) else model
        self.dataset = dataset
        self._account = account
        self._connection = connection or (self.llm.connection if self.llm else None)
        self.hyperparameters = hyperparameters_wire(
            {
                "epochs": epochs,
                "learning_rate": learning_rate,
                "lora_rank": lora_rank,
                **hyperparameters,
            }
        )
        self.id: str | None = None
        self.obj: Obj | None = None

    @property
    def url(self) -> str:
        """The dashboard page of the FineTuningJob on the gateway (GRAFT_GATEWAY_URL): progress,
        the loss curve, conditions, links to its dataset and deployment. Known once the job was
        created or found (after sync())."""
        if self.id is None:
            raise ConfigError(
                "the job has no ID yet: call sync() (it creates the FineTuningJob or finds the "
                "one with this signature) before url"
            )
        return self.connection.dashboard_url("fine-tuning-jobs", self.id)

    def __repr__(self) -> str:
        return f"SupervisedFineTuningJob(name={self.name!r}, model={self.model!r}, id={self.id!r})"

    @property
    def base_model(self) -> str:
        """The base model's full name (for an LLM: its base model, the addon's base if any)."""
        if self.llm is not None:
            return self.llm.info.base_full_name
        try:
            return parse_ref(self.model, "models", account=self.account).full_name
        except InvalidReference as exc:
            raise ConfigError(f"model: {exc}") from None

    @property
    def signature_labels(self) -> dict[str, str]:
        return job_signature_labels(self.name, self.base_model)

    @property
    def full_name(self) -> str:
        if self.id is None:
            self.sync()
        assert self.id is not None
        return self.connection.full_name(PLURAL, self.id)

    # --- Sync -----------------------------------------------------------------------------------

    def find(self) -> Obj | None:
        """The FineTuningJob with this signature, if the SDK created one before."""
        found = [
            o
            for o in self.connection.list(PLURAL, selector(self.signature_labels))
            if not (o.get("metadata") or {}).get("deletionTimestamp")
        ]
        found.sort(key=lambda o: str(o["metadata"].get("creationTimestamp") or ""))
        return found[0] if found else None

    def sync(self) -> SupervisedFineTuningJob:
        """Re-use the job with this signature, or create it (syncing its Dataset first)."""
        obj = self.find()
        if obj is None:
            obj = self._create()
        elif isinstance(self.dataset, Dataset) and self.dataset.id is None:
            # The job is re-used and needs nothing uploaded; the Dataset still learns its ID
            # when one with its signature exists (a look-up, never a creation).
            found = self.dataset.find()
            if found is not None:
                self.dataset.obj, self.dataset.id = found, found["metadata"]["name"]
        self.obj = obj
        self.id = obj["metadata"]["name"]
        return self

    def _dataset_ref(self) -> str:
        if isinstance(self.dataset, Dataset):
            if self.dataset.id is None or not is_true(self.dataset.obj, "Ready"):
                self.dataset.sync()
            return self.dataset.full_name
        try:
            return parse_ref(self.dataset, "datasets", account=self.account).full_name
        except InvalidReference as exc:
            raise ConfigError(f"dataset: {exc}") from None

    def _choose_id(self) -> str:
        conn = self.connection
        signature = ids.signature_hash(self.name, self.base_model)
        for candidate in ids.candidates(ids.job_id(self.name), signature):
            if conn.get(PLURAL, candidate) is None and conn.get("models", candidate) is None:
                return candidate
        raise Conflict(
            f"a FineTuningJob or Model named {ids.job_id(self.name)!r} and {candidate!r} "
            "already exists for another job; choose another name",
            resource=conn.full_name(PLURAL, candidate),
        )

    def _create(self) -> Obj:
        dataset = self._dataset_ref()
        id_ = self._choose_id()
        base = parse_ref(self.base_model, "models", account=self.account)
        spec: dict[str, Any] = {
            "baseModel": base.id if base.account == self.account else base.full_name,
            "dataset": dataset,
            "outputModel": id_,
        }
        if self.hyperparameters:
            spec["hyperparameters"] = self.hyperparameters
        return self.connection.create(
            PLURAL, {"metadata": {"name": id_, "labels": self.signature_labels}, "spec": spec}
        )

    # --- Wait -----------------------------------------------------------------------------------

    def get(self) -> Obj:
        if self.id is None:
            self.sync()
        assert self.id is not None
        obj = self.connection.get(PLURAL, self.id)
        if obj is not None:
            self.obj = obj
        return self.obj or {}

    def wait(
        self,
        timeout: float | None = None,
        *,
        stream: Stream | None = None,
        interval: float = 5.0,
    ) -> SupervisedFineTuningJob:
        """Wait for the job to end, showing its progress on `stream` (stderr by default)."""
        if self.id is None:
            self.sync()
        assert self.id is not None
        self.obj = wait_for_job(
            self.connection,
            self.id,
            label=self.name,
            timeout=timeout,
            stream=stream,
            interval=interval,
        )
        return self

    # --- Output ---------------------------------------------------------------------------------

    @property
    def output_model(self) -> str:
        """The full name of the addon Model the job publishes."""
        obj = self.get()
        published = (obj.get("status") or {}).get("outputModel")
        if published:
            return str(published)
        output = (obj.get("spec") or {}).get("outputModel") or self.id
        return self.connection.full_name("models", str(output))

    @property
    def output_llm(self) -> LLM:
        """An LLM of the trained addon: in the Deployment of the LLM this job came from, else
        "shared" (an existing Deployment of the base model with addons enabled)."""
        if self.llm is not None and self.llm.deployment_type == "on-demand":
            return LLM(
                self.output_model,
                id=self.llm.id,
                deployment_type="on-demand",
                connection=self.connection,
                engine=self.llm.engine,
                replicas=self.llm.replicas,
                deployment_spec=self.llm.deployment_spec,
            )
        return LLM(self.output_model, deployment_type="shared", connection=self.connection)


def wait_for_job(
    conn: Connection,
    name: str,
    *,
    label: str | None = None,
    timeout: float | None = None,
    stream: Stream | None = None,
    interval: float = 5.0,
) -> Obj:
    """Wait for FineTuningJob `name` to end, showing its phase and status.progress on `stream`
    (stderr by default); the job when it succeeded, FineTuningJobFailed when it failed."""
    printer = ProgressPrinter(
        stream if stream is not None else sys.stderr, label=label or name, interval=interval
    )
    resource = conn.full_name(PLURAL, name)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            obj = conn.get(PLURAL, name)
            if obj is None:
                raise NotFound(f"FineTuningJob {name} does not exist", resource=resource)
            status = obj.get("status") or {}
            progress = status.get("progress")
            failed = condition(obj, "Failed") or {}
            if failed.get("status") == ConditionStatus.TRUE.value:
                printer.update("Failed", progress)
                raise FineTuningJobFailed(
                    f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}",
                    reason=str(failed.get("reason") or "Failed"),
                    resource=resource,
                )
            if is_true(obj, "Succeeded"):
                printer.update("Succeeded", progress)
                return obj
            ready = condition(obj, "Ready") or {}
            phase = str(status.get("state") or ready.get("reason") or "Pending")
            printer.update(phase, progress)
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"not finished after {timeout:g}s: {ready.get('reason', phase)}: "
                    f"{ready.get('message', '')}",
                    resource=resource,
                )
            time.sleep(POLL)
    finally:
        printer.close()
