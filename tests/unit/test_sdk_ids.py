"""IDs the SDK derives from file and job names, and the signatures it finds resources by."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.core import keys
from graft.core.names import is_id
from graft.core.signatures import (
    job_signature_labels,
    label_safe,
    selector,
    signature_labels,
    signature_selector,
)
from graft.sdk import ids
from graft.sdk.dataset import Dataset, config_map_key
from graft.sdk.errors import ConfigError
from graft.sdk.finetuning import hyperparameters_wire


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("train.jsonl", "train"),
        ("My Data_v2.JSONL", "my-data-v2"),
        ("/some/dir/chat.json", "chat"),
        ("--weird__name--.jsonl", "weird-name"),
        ("données.jsonl", "donn-es"),
        (".jsonl", "jsonl"),
        ("___.jsonl", "dataset"),
        ("a" * 80 + ".jsonl", "a" * 63),
        ("x" * 62 + "-y.jsonl", "x" * 62),
    ],
)
def test_dataset_ids_from_file_names(filename: str, expected: str) -> None:
    got = ids.dataset_id(filename)
    assert got == expected
    assert is_id(got)


@pytest.mark.parametrize("name", ["My Job", "job/with/slashes", "ÅÄÖ", "a" * 200, "-x-", "7up"])
def test_job_ids_are_valid(name: str) -> None:
    assert is_id(ids.job_id(name))


def test_the_collision_suffix_is_stable_and_valid() -> None:
    signature = ids.signature_hash("sha", "train.jsonl")
    first, second = ids.candidates("train", signature)
    assert first == "train"
    assert second == f"train-{signature[:8]}"
    assert second == ids.with_suffix("train", ids.signature_hash("sha", "train.jsonl"))
    long = ids.with_suffix("a" * 63, signature)
    assert len(long) == 63
    assert is_id(long)
    assert long.endswith(signature[:8])
    # another signature, another suffix
    assert ids.with_suffix("train", ids.signature_hash("sha", "other.jsonl")) != second


def test_signature_hash_separates_its_parts() -> None:
    assert ids.signature_hash("ab", "c") != ids.signature_hash("a", "bc")


def test_pair_ids() -> None:
    assert ids.pair_id("addon", "dep") == "addon-dep"
    long = ids.pair_id("a" * 40, "b" * 40)
    assert is_id(long)
    assert len(long) == 63
    assert long != ids.pair_id("a" * 40, "b" * 39 + "c")


def test_dataset_signature_labels_and_selector() -> None:
    sha = "f" * 64
    assert signature_labels(sha, "train.jsonl") == {
        keys.SHA256_PREFIX: "f" * 63,
        keys.FILENAME: "train.jsonl",
    }
    assert signature_selector(sha, "train.jsonl") == (
        f"{keys.FILENAME}=train.jsonl,{keys.SHA256_PREFIX}={'f' * 63}"
    )


def test_job_signature_labels_are_label_safe() -> None:
    labels = job_signature_labels("my job: v1", "accounts/a/models/base")
    assert labels[keys.SDK_JOB] == label_safe("my job: v1")
    assert labels[keys.SDK_JOB].startswith("sha256-")
    assert labels[keys.SDK_MODEL].startswith("sha256-")
    assert len(labels[keys.SDK_MODEL]) <= 63
    assert job_signature_labels("simple", "accounts/a/models/base")[keys.SDK_JOB] == "simple"
    # another model, another signature
    other = job_signature_labels("my job: v1", "accounts/a/models/other")
    assert other[keys.SDK_JOB] == labels[keys.SDK_JOB]
    assert other[keys.SDK_MODEL] != labels[keys.SDK_MODEL]
    assert selector(labels) != selector(other)


def test_dataset_signature_is_the_bytes_and_the_file_name() -> None:
    examples = [{"prompt": "2+2=", "completion": "4"}]
    one = Dataset.from_list(examples, filename="a.jsonl", account="acme")
    same = Dataset.from_list(examples, filename="a.jsonl", account="acme")
    renamed = Dataset.from_list(examples, filename="b.jsonl", account="acme")
    changed = Dataset.from_list(
        [{"prompt": "2+2=", "completion": "5"}], filename="a.jsonl", account="acme"
    )
    assert one.signature == same.signature
    assert one.sha256 == renamed.sha256
    assert one.signature != renamed.signature
    assert one.sha256 != changed.sha256
    assert one.report.format == "completion"


def test_a_file_and_its_list_have_the_same_sha256(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt":"p","completion":"c"}\n')
    from_file = Dataset.from_file(path, account="acme")
    from_list = Dataset.from_list([{"prompt": "p", "completion": "c"}], filename="data.jsonl")
    assert from_file.signature == from_list.signature


def test_config_map_keys() -> None:
    assert config_map_key("train.jsonl") == "train.jsonl"
    assert config_map_key("my data (1).jsonl") == "my-data-1-.jsonl"
    assert config_map_key("...") == "dataset.jsonl"


def test_hyperparameters_wire() -> None:
    assert hyperparameters_wire({"epochs": 2, "learning_rate": 0.001, "lora_rank": None}) == {
        "epochs": 2,
        "learningRate": 0.001,
    }
    assert hyperparameters_wire({"max_steps": 3}) == {"maxSteps": 3}
    with pytest.raises(ConfigError, match="unknown hyperparameters warmup"):
        hyperparameters_wire({"warmup": 3})
