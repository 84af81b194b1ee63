"""The Python SDK of Graft, in the hosted platform's style: resources found by their signature
before they are created, so a script can be run again without making anything twice.

    from graft.sdk import LLM, Dataset

    llm = LLM(model="qwen3-0-6b", id="my-deployment", deployment_type="on-demand").apply()
    dataset = Dataset.from_file("train.jsonl")
    job = llm.create_supervised_fine_tuning_job("my-job", dataset, epochs=1).wait()
    tuned = job.output_llm.apply().wait_ready()
    print(tuned.chat.completions.create(messages=[{"role": "user", "content": "Hi"}]))

It uses the user's own kubeconfig (only their account's member role is needed), the account
from `account=`, GRAFT_ACCOUNT or the kubeconfig context's namespace, and the gateway at
GRAFT_GATEWAY_URL with GRAFT_API_KEY. It never imports kopf or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graft.sdk.connection import Connection
    from graft.sdk.dataset import Dataset
    from graft.sdk.errors import (
        ConfigError,
        Conflict,
        DatasetFailed,
        DatasetInvalid,
        FineTuningJobFailed,
        Forbidden,
        GraftError,
        InvalidSpec,
        NotFound,
        NotReady,
        Timeout,
        Unauthorized,
        Unavailable,
        UploadError,
    )
    from graft.sdk.finetuning import SupervisedFineTuningJob
    from graft.sdk.llm import LLM

_HOMES = {
    "Connection": "connection",
    "Dataset": "dataset",
    "SupervisedFineTuningJob": "finetuning",
    "LLM": "llm",
}
"""Where each name lives; the errors live in graft.sdk.errors. Names are imported when first
used, so that `graft`'s parser (which registers the user verbs of graft.sdk.cli) does not load
the kubernetes client for the operator's and the pods' own subcommands."""


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'graft.sdk' has no attribute {name!r}")
    module = importlib.import_module(f"graft.sdk.{_HOMES.get(name, 'errors')}")
    return getattr(module, name)


__all__ = [
    "LLM",
    "ConfigError",
    "Conflict",
    "Connection",
    "Dataset",
    "DatasetFailed",
    "DatasetInvalid",
    "FineTuningJobFailed",
    "Forbidden",
    "GraftError",
    "InvalidSpec",
    "NotFound",
    "NotReady",
    "SupervisedFineTuningJob",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UploadError",
]
