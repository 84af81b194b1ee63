"""`graft train` on the tiny model: output, loss, determinism, and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dataplane_support import DatasetMaker, TrainRunner

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

HYPER = ["--max-steps", "40", "--learning-rate", "1e-2", "--batch-size", "8", "--seed", "7"]


def assistant_loss(model: object, tokenizer: object, dataset: Path) -> float:
    """Mean loss of the assistant replies of a chat dataset, computed with plain transformers."""
    import torch

    losses = []
    for line in dataset.read_text().splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)  # type: ignore[attr-defined]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        with torch.no_grad():
            out = model(  # type: ignore[operator]
                input_ids=torch.tensor([full_ids]), labels=torch.tensor([labels])
            )
        losses.append(float(out.loss))
    return sum(losses) / len(losses)


def test_train_writes_a_peft_adapter_that_lowers_the_loss(
    tiny_model: Path, tmp_path: Path, run_train: TrainRunner, make_chat_dataset: DatasetMaker
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = make_chat_dataset(tmp_path / "train.jsonl", "alpha alpha alpha")
    output = tmp_path / "out" / "adapter"
    code, summary, _ = run_train(
        [
            "--base-model",
            str(tiny_model),
            "--dataset",
            str(dataset),
            "--output",
            str(output),
            *HYPER,
        ],
        tmp_path / "termination",
    )
    assert code == 0
    assert summary is not None
    assert sorted(p.name for p in output.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    # nothing left behind next to the output
    assert sorted(p.name for p in output.parent.iterdir()) == ["adapter"]
    assert summary["status"] == "succeeded"
    assert summary["output"] == str(output)
    assert summary["examples"] == 50
    assert summary["steps"] == 40
    assert summary["format"] == "chat"
    tokens, trained = summary["tokens"], summary["trained_tokens"]
    assert isinstance(tokens, int)
    assert isinstance(trained, int)
    assert 0 < trained < tokens
    assert isinstance(summary["wall_time_seconds"], float)
    first, final = summary["first_loss"], summary["final_loss"]
    assert isinstance(first, float)
    assert isinstance(final, float)
    assert final < first / 2

    config = json.loads((output / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 8

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = assistant_loss(base, tokenizer, dataset)
    tuned = PeftModel.from_pretrained(base, str(output))
    after = assistant_loss(tuned, tokenizer, dataset)
    assert after < before / 4, (before, after)


def test_same_seed_same_adapter(
    tiny_model: Path, tmp_path: Path, run_train: TrainRunner, make_chat_dataset: DatasetMaker
) -> None:
    from safetensors.torch import load_file

    dataset = make_chat_dataset(tmp_path / "train.jsonl", "determinism", n=20)
    runs = []
    for run in ("a", "b", "c"):
        seed = "8" if run == "c" else "7"
        args = [
            "--base-model",
            str(tiny_model),
            "--dataset",
            str(dataset),
            "--output",
            str(tmp_path / run),
        ]
        args += ["--max-steps", "5", "--learning-rate", "1e-2", "--batch-size", "4", "--seed", seed]
        code, summary, _ = run_train(args, tmp_path / f"term-{run}")
        assert code == 0
        assert summary is not None
        runs.append(
            (summary["final_loss"], load_file(tmp_path / run / "adapter_model.safetensors"))
        )
    (loss_a, weights_a), (loss_b, weights_b), (_, weights_c) = runs
    assert loss_a == loss_b
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert any(not (weights_a[k] == weights_c[k]).all() for k in weights_a)


def test_completion_format_and_file_uris(
    tiny_model: Path, tmp_path: Path, run_train: TrainRunner
) -> None:
    dataset = tmp_path / "completions.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}) + "\n"
            for i in range(12)
        )
    )
    output = tmp_path / "existing-empty-dir"  # as a mounted volume would be
    output.mkdir()
    args = ["--base-model", f"file://{tiny_model}", "--dataset", f"file://{dataset}"]
    args += ["--output", f"file://{output}", "--max-steps", "3", "--batch-size", "4"]
    code, summary, _ = run_train(args, tmp_path / "termination")
    assert code == 0
    assert summary is not None
    assert summary["format"] == "completion"
    assert summary["output"] == f"file://{output}"
    assert sorted(p.name for p in output.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_summary_on_stdout_and_progress_on_stderr(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_chat_dataset: DatasetMaker,
) -> None:
    dataset = make_chat_dataset(tmp_path / "train.jsonl", "hello", n=8)
    termination = tmp_path / "termination"
    os.environ["GRAFT_TERMINATION_MESSAGE_PATH"] = str(termination)  # the environment variable
    try:
        from graft.dataplane.train import main

        args = [
            "--base-model",
            str(tiny_model),
            "--dataset",
            str(dataset),
            "--output",
            str(tmp_path / "o"),
        ]
        assert main([*args, "--max-steps", "2", "--batch-size", "4"]) == 0
    finally:
        del os.environ["GRAFT_TERMINATION_MESSAGE_PATH"]
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(termination.read_text())
    assert "step 1/2  epoch 1/1  loss " in err
    assert "step 2/2" in err


def bad_line_dataset(tmp_path: Path, line: str) -> Path:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("malformed", "line 3: malformed JSON: Expecting property name enclosed in double quotes"),
        ("unknown-role", 'line 3: messages[0] has unknown role "narrator"'),
        ("missing-field", 'line 3: messages[1] is missing field "content"'),
        ("empty", "empty dataset: no examples (the file is empty)"),
        ("no-dataset", "dataset not found: "),
        ("no-base-model", "base model not found: "),
        ("base-model-not-hf", "has no config.json"),
        ("output-not-writable", "output not writable: "),
        ("output-not-empty", "is not empty (old.txt); refusing to overwrite"),
        ("unknown-target-modules", "cannot apply LoRA: "),
        ("s3-uri", "s3:// is not read by graft train"),
    ],
)
def test_bad_input_fails_with_one_clear_message(
    tiny_model: Path,
    tmp_path: Path,
    case: str,
    expected: str,
    run_train: TrainRunner,
    make_chat_dataset: DatasetMaker,
) -> None:
    base, output = str(tiny_model), tmp_path / "out"
    output_arg = str(output)
    dataset = make_chat_dataset(tmp_path / "good.jsonl", "ok", n=4)
    extra: list[str] = []
    if case == "malformed":
        dataset = bad_line_dataset(tmp_path, "{not json")
    elif case == "unknown-role":
        dataset = bad_line_dataset(tmp_path, '{"messages": [{"role": "narrator", "content": "x"}]}')
    elif case == "missing-field":
        dataset = bad_line_dataset(
            tmp_path, '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}'
        )
    elif case == "empty":
        dataset = tmp_path / "empty.jsonl"
        dataset.write_text("")
    elif case == "no-dataset":
        dataset = tmp_path / "missing.jsonl"
    elif case == "no-base-model":
        base = str(tmp_path / "no-such-model")
    elif case == "base-model-not-hf":
        base = str(tmp_path)
    elif case == "output-not-writable":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        output_arg = str(blocker / "out")  # a path below a regular file can never be created
    elif case == "output-not-empty":
        output.mkdir()
        (output / "old.txt").write_text("x")
    elif case == "unknown-target-modules":
        extra = ["--target-modules", "no_such_proj"]
    elif case == "s3-uri":
        output_arg = "s3://bucket/out"
    args = ["--base-model", base, "--dataset", str(dataset), "--output", output_arg]
    code, _, message = run_train([*args, "--max-steps", "1", *extra], tmp_path / "termination")
    assert code == 1
    assert expected in message
    if case in ("malformed", "unknown-role", "missing-field", "empty"):
        # the problems of a dataset are listed one a line, after what they are
        assert message.splitlines()[0] == f"invalid dataset: 1 problem in {dataset}:"
        assert message.splitlines()[1].startswith(expected)
    else:
        assert "\n" not in message.strip()  # one line
    # nothing that looks like an adapter was written
    assert not (output / "adapter_config.json").exists()
    assert not [p for p in tmp_path.rglob("*") if ".graft-staging-" in p.name]


def test_exit_codes_from_the_real_command_line(tiny_model: Path, tmp_path: Path) -> None:
    """Run `python -m graft.cli train` as the trainer Job does: the exit status is what counts."""
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{oops\n'
    )
    termination = tmp_path / "termination"
    env = {**os.environ, "GRAFT_TERMINATION_MESSAGE_PATH": str(termination)}
    command = [sys.executable, "-m", "graft.cli", "train", "--base-model", str(tiny_model)]
    command += ["--dataset", str(dataset), "--output", str(tmp_path / "out")]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: invalid dataset: 1 problem in {dataset}:\nline 2: malformed JSON" in (
        result.stderr
    )
    assert termination.read_text().startswith(
        f"invalid dataset: 1 problem in {dataset}:\nline 2: malformed JSON"
    )
    assert "torch" not in result.stderr  # failed before importing the heavy parts

    usage = subprocess.run(
        [sys.executable, "-m", "graft.cli", "train", "--epochs", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2
    assert "usage: graft train" in usage.stderr
    assert "--epochs" in termination.read_text()


def test_a_malformed_dataset_is_reported_with_every_problem(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A person fixes the file in one pass: all its problems, each with its line number, on
    stderr and in the termination message (which the FineTuningJob's Failed condition shows)."""
    good = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    dataset = tmp_path / "data.jsonl"
    lines = [good, good, "{not json", good, '{"messages": [{"role": "narrator", "content": "x"}]}']
    lines += [good, '{"prompt": "p", "completion": ""}', good]
    dataset.write_text("\n".join(lines) + "\n")
    problems = [
        "line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        'line 5: messages[0] has unknown role "narrator"; expected one of: system, user, assistant',
        'line 7: "completion" is empty: nothing to learn from this example',
    ]
    termination = tmp_path / "termination"
    env = {**os.environ, "GRAFT_TERMINATION_MESSAGE_PATH": str(termination)}
    command = [sys.executable, "-m", "graft.cli", "train", "--base-model", str(tiny_model)]
    command += ["--dataset", str(dataset), "--output", str(tmp_path / "out")]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    expected = [f"invalid dataset: 3 problems in {dataset}:", *problems]
    assert result.stderr.splitlines() == [f"error: {expected[0]}", *expected[1:]]
    assert termination.read_text().splitlines() == expected
    assert not (tmp_path / "out").exists()


def test_smallmodels_command_line(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "graft.dataplane.smallmodels", "tiny", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == str(target)
    assert (target / "config.json").is_file()
    assert (target / "tokenizer.json").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "graft.dataplane.smallmodels", "tiny", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
