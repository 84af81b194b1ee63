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
