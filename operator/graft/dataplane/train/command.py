"""The `graft train` command: arguments, input checks, output handling and the summary.

Exit codes (the trainer Job's pod failure policy can act on them):

- 0: the adapter is in the output location; a JSON summary is on stdout and in the
  termination message.
- 1: invalid input that retrying will not fix (malformed dataset, missing base model, output
  not writable or not empty, unknown target modules, ...). The termination message says what is
  wrong: one line, or for a malformed dataset `invalid dataset: N problems in PATH:` and then
  every problem with its line number, one a line, up to 20 (`... and K more` beyond them, or
  beyond what fits in the termination message's 4096 bytes; stderr lists all 20).
- 2: invalid command line.
- 3: training failed for another reason (out of memory, I/O error, a bug); retrying may help.

Training itself is in `graft.dataplane.train.trainer`, imported only once the inputs are known to be good.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlparse

from graft.api.dataformat import DatasetError, DatasetReport, read_dataset
from graft.api.reports import TrainerSummary
from graft.dataplane import progress, termination
from graft.dataplane.argtypes import positive_float, positive_int
from graft.dataplane.train.config import TrainConfig

EXIT_OK = 0
EXIT_INVALID_INPUT = 1
EXIT_USAGE = 2
EXIT_FAILED = 3

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STAGING_PREFIX = ".graft-staging-"


class InvalidInputError(Exception):
    """Input that retrying will not fix; the message is shown to the person as is."""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graft train",
        description="Fine-tune a LoRA adapter on a chat or completion JSONL dataset (CPU or GPU).",
    )
    where = parser.add_argument_group("inputs and output")
    where.add_argument(
        "--base-model", required=True, help="base model directory or file:// URI (HF format)"
    )
    where.add_argument("--dataset", required=True, help="JSONL file or file:// URI")
    where.add_argument(
        "--output",
        required=True,
        help="directory or file:// URI for adapter_config.json + adapter_model.safetensors; "
        "must not exist or be empty",
    )
    where.add_argument(
        "--termination-message-path",
        default=None,
        help=f"where to write the summary or the failure message (default: ${termination.ENV}"
        f" or {termination.DEFAULT_PATH} when that file exists)",
    )
    hp = parser.add_argument_group("hyperparameters")
    hp.add_argument("--epochs", type=positive_int, default=1, help="passes over the dataset (1)")
    hp.add_argument("--learning-rate", type=positive_float, default=2e-4, help="AdamW (2e-4)")
    hp.add_argument("--lora-rank", type=positive_int, default=8, help="LoRA r (8)")
    hp.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha (16)")
    hp.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (0)")
    hp.add_argument(
        "--target-modules",
        default="all-linear",
        help="comma-separated module names (e.g. q_proj,v_proj) or all-linear (default)",
    )
    hp.add_argument("--batch-size", type=positive_int, default=4, help="examples per step (4)")
    hp.add_argument(
        "--max-context-length",
        type=positive_int,
        default=1024,
        help="tokens per example; longer examples are truncated (1024)",
    )
    hp.add_argument("--seed", type=int, default=42, help="random seed (42)")
    hp.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="train exactly this many steps, cycling over the data; overrides --epochs",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    started = time.monotonic()
    termination_path: str | None = _termination_path(None)
    try:
        args = build_parser().parse_args(list(argv))
        termination_path = _termination_path(args.termination_message_path)
        config = config_from_args(args)
        report = check_inputs(config)
        output = StagedOutput.prepare(config.output)
        try:
            summary = _train(config, report, output.staging)
            output.commit()
        finally:
            output.abort()
    except UsageError as exc:
        message = f"graft train: {exc}"
        build_parser().print_usage(sys.stderr)
        return _fail(EXIT_USAGE, _one_line(message), termination_path)
    except DatasetError as exc:
        # Every problem, so that the file is fixed in one pass; as many as fit in the message.
        limited = exc.describe(termination.LIMIT)
        return _fail(EXIT_INVALID_INPUT, str(exc), termination_path, limited)
    except InvalidInputError as exc:
        return _fail(EXIT_INVALID_INPUT, _one_line(str(exc)), termination_path)
    except KeyboardInterrupt:
        return _fail(EXIT_FAILED, "interrupted", termination_path)
    except Exception as exc:
        traceback.print_exc()
        message = f"training failed: {type(exc).__name__}: {exc}"
        return _fail(EXIT_FAILED, _one_line(message), termination_path)

    details = {**summary.details, "wall_time_seconds": round(time.monotonic() - started, 3)}
    line = TrainerSummary(summary.final_loss, summary.steps, summary.output, details).to_message()
    print(line, flush=True)
    _write_termination_message(termination_path, line)
    return EXIT_OK


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    targets = args.target_modules.strip()
    target_modules: str | list[str] = (
        "all-linear"
        if targets == "all-linear"
        else [t.strip() for t in targets.split(",") if t.strip()]
    )
    if not target_modules:
        raise UsageError("--target-modules is empty")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise UsageError("--lora-dropout must be in [0, 1)")
    return TrainConfig(
        base_model=local_path(args.base_model, "--base-model"),
        dataset=local_path(args.dataset, "--dataset"),
        output=local_path(args.output, "--output"),
        output_location=args.output,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
        batch_size=args.batch_size,
        max_context_length=args.max_context_length,
        seed=args.seed,
        max_steps=args.max_steps,
    )


def local_path(location: str, flag: str) -> Path:
    """A path or file:// URI as a local path. Other schemes are fetched by the init container."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidInputError(f"{flag}: file URI with a host is not supported: {location}")
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidInputError(
            f"{flag}: {parsed.scheme}:// is not read by graft train; give a local path or "
            f"file:// URI (the Job's init container downloads {parsed.scheme}:// artifacts)"
        )
    return Path(location)


def check_inputs(config: TrainConfig) -> DatasetReport:
    """Everything that can be checked without torch: fail fast, with InvalidInputError or, for a
    malformed dataset, DatasetError (every problem, with its line number)."""
    base = config.base_model
    if not base.is_dir():
        raise InvalidInputError(f"base model not found: {base} is not a directory")
    if not (base / "config.json").is_file():
        raise InvalidInputError(
            f"base model not found: {base} has no config.json (expected a Hugging Face model "
            "directory)"
        )
    if not config.dataset.is_file():
        raise InvalidInputError(f"dataset not found: {config.dataset}")
    try:
        report = read_dataset(config.dataset)
    except OSError as exc:
        raise InvalidInputError(f"cannot read dataset {config.dataset}: {exc.strerror}") from exc
    if not report.ok:
        raise DatasetError(report, str(config.dataset))
    return report


class StagedOutput:
    """Write the adapter to a staging directory, then move it into place.

    When the output directory does not exist, the staging directory is its sibling and is
    renamed onto it in one step. When it exists (an empty directory, maybe a mounted volume),
    the staging directory is inside it and the files are moved in with the adapter config last:
    peft and vLLM recognise an adapter by adapter_config.json, so nothing looks complete early.
    """

    def __init__(self, target: Path, staging: Path, into_existing: bool) -> None:
        self.target = target
        self.staging = staging
        self.into_existing = into_existing

    @classmethod
    def prepare(cls, target: Path) -> StagedOutput:
        try:
            if target.exists():
                if not target.is_dir():
                    raise InvalidInputError(f"output {target} exists and is not a directory")
                for entry in target.iterdir():
                    if entry.name.startswith(STAGING_PREFIX):
                        shutil.rmtree(entry, ignore_errors=True)  # left by an earlier attempt
                leftovers = sorted(e.name for e in target.iterdir())
                if leftovers:
                    shown = ", ".join(leftovers[:5]) + (", ..." if len(leftovers) > 5 else "")
                    raise InvalidInputError(
                        f"output directory {target} is not empty ({shown}); refusing to overwrite"
                    )
                staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
                return cls(target, staging, into_existing=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(
                tempfile.mkdtemp(prefix=f".{target.name}{STAGING_PREFIX}", dir=target.parent)
            )
            staging.chmod(0o755)
            return cls(target, staging, into_existing=False)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise InvalidInputError(f"output not writable: {target}: {reason}") from exc

    def commit(self) -> None:
        for path in self.staging.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; the model server may run as another user
        if not self.into_existing:
            self.staging.rename(self.target)
            return
        names = sorted(p.name for p in self.staging.iterdir())
        names.sort(key=lambda name: name == ADAPTER_CONFIG)  # the config goes last
        for name in names:
            (self.staging / name).rename(self.target / name)
        self.staging.rmdir()

    def abort(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)


def _train(config: TrainConfig, report: DatasetReport, staging: Path) -> TrainerSummary:
    from graft.dataplane.train.trainer import TrainingInputError, train

    # Live progress for the FineTuningJob's status, when the operator asked for it (the last
    # report, step == totalSteps, goes when training ends; the operator writes the final
    # figures from the summary below anyway).
    reporter = progress.from_environment(_progress)
    try:
        result = train(
            config, report, staging, log=_progress, progress=reporter.update if reporter else None
        )
    except TrainingInputError as exc:
        raise InvalidInputError(str(exc)) from exc
    finally:
        if reporter is not None:
            reporter.close()
    details = {
        "adapter_files": sorted(p.name for p in staging.iterdir()),
        "base_model": str(config.base_model),
        "dataset": str(config.dataset),
        "dataset_sha256": report.sha256,
        "format": report.format,
        "examples": result.examples,
        "examples_skipped": result.examples_skipped,
        "epochs": result.epochs,
        "tokens": result.tokens,
        "trained_tokens": result.trained_tokens,
        "first_loss": round(result.first_loss, 6),
        "train_seconds": round(result.train_seconds, 3),
        "lora_rank": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "target_modules": config.target_modules,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "seed": config.seed,
    }
    return TrainerSummary(
        final_loss=round(result.final_loss, 6),
        steps=result.steps,
        output=config.output_location,
        details=details,
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fail(
    code: int, message: str, termination_path: str | None, termination_message: str | None = None
) -> int:
    """`error: message` to stderr; `termination_message` (default: the message) to the
    termination message, which the FineTuningJob's Failed condition shows as it is."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    _write_termination_message(termination_path, termination_message or message)
    return code


def _one_line(message: str) -> str:
    """An exception's message (maybe a library's, over several lines) as one line."""
    return " ".join(message.split())


def _termination_path(flag: str | None) -> str | None:
    return termination.message_path(flag)


def _write_termination_message(path: str | None, message: str) -> None:
    termination.write(path, message)
