"""`graft dataset validate SOURCE`: check a JSONL dataset and report its signature.

The entrypoint of a Dataset's validation Job. SOURCE is a path (a mounted PVC or ConfigMap
key), a file:// URI, an http(s):// URL or an s3:// object (see graft.dataplane.fetch). The data is read
once, as a stream, and checked with graft.api.dataformat: every line must be an example of the
declared format. Limits: at least --min-examples examples, at most --max-examples, and at most
--max-bytes bytes (reading stops there).

The result goes to stdout and to the container's termination message as one compact JSON object
(graft.api.reports.ValidationResult): sha256, sizeBytes, exampleCount, filename, format and, when
the data is not usable, up to 20 problems with their line numbers. Exit codes: 0 valid; 1 invalid,
or the source cannot be read and retrying will not help; 2 invalid command line; 3 reading failed
and a retry may help (network).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

from graft.api.dataformat import DEFAULT_MAX_ERRORS, LineError, parse_lines
from graft.api.reports import ValidationResult
from graft.dataplane import termination
from graft.dataplane.argtypes import positive_int
from graft.dataplane.fetch import (
    EXIT_PERMANENT,
    EXIT_TRANSIENT,
    FetchError,
    Readable,
    open_source,
)

EXIT_VALID = 0
EXIT_INVALID = 1


class TooLarge(Exception):
    pass


def _lines(stream: Readable, max_bytes: int) -> Iterator[bytes]:
    """The stream's lines, stopping with TooLarge as soon as more than max_bytes were read."""
    total = 0
    while True:
        line = stream.readline(max_bytes + 1 - total)
        if not line:
            return
        total += len(line)
        if total > max_bytes:
            raise TooLarge
        yield line


def validate(
    source: str,
    *,
    format_: str | None,
    filename: str | None,
    min_examples: int,
    max_examples: int,
    max_bytes: int,
) -> ValidationResult:
    """Read and check the dataset; raises FetchError when it cannot be read."""
    with open_source(source) as opened:
        name = filename or opened.name
        too_large = (
            f"the data is larger than the limit of {max_bytes} bytes; split it or ask your "
            "cluster admin about the limit (GRAFT_DATASET_MAX_BYTES)"
        )
        if opened.size is not None and opened.size > max_bytes:
            return ValidationResult(
                status="invalid",
                size_bytes=opened.size,
                filename=name,
                errors=(too_large,),
                error_count=1,
            )
        try:
            report = parse_lines(_lines(opened.stream, max_bytes), max_errors=DEFAULT_MAX_ERRORS)
        except TooLarge:
            return ValidationResult(
                status="invalid", filename=name, errors=(too_large,), error_count=1
            )
        except OSError as exc:
            raise FetchError(f"{source}: read failed: {exc}", permanent=False) from None

    extra: list[LineError] = []
    count = len(report.examples)
    if format_ and report.format and report.format != format_:
        first = report.examples[0].line if report.examples else 1
        extra.append(
            LineError(
                first,
                f"the first valid example is in {report.format} format, but the Dataset says "
                f"format: {format_}",
            )
        )
    if report.ok and count < min_examples:
        extra.append(
            LineError(None, f"too few examples: {count}; at least {min_examples} are needed")
        )
    if count > max_examples:
        extra.append(LineError(None, f"too many examples: {count}; the limit is {max_examples}"))
    report.add_errors(extra, first=True)
    return ValidationResult(
        status="valid" if report.ok else "invalid",
        sha256=report.sha256,
        size_bytes=report.size_bytes,
        example_count=count,
        filename=name,
        format=report.format,
        errors=tuple(str(e) for e in report.errors),
        error_count=report.error_count,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="path, file://, http(s):// or s3:// URI")
    parser.add_argument(
        "--format", choices=("chat", "completion"), help="the format every line must have"
    )
    parser.add_argument("--filename", help="file name for the signature (default: the source's)")
    parser.add_argument(
        "--min-examples", type=positive_int, default=3, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--max-examples", type=positive_int, default=3_000_000, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--max-bytes", type=positive_int, default=1 << 30, help="(default: %(default)s)"
    )
    termination.add_argument(parser)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dataset validate` to the `graft` command line."""
    dataset = sub.add_parser("dataset", help="work with training datasets (JSONL)")
    commands = dataset.add_subparsers(title="dataset commands", metavar="COMMAND")
    parser = commands.add_parser(
        "validate",
        help="check a JSONL dataset; print its sha256, size, example count and problems",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    path = termination.message_path(ns.termination_message_path)
    try:
        result = validate(
            ns.source,
            format_=ns.format,
            filename=ns.filename,
            min_examples=ns.min_examples,
            max_examples=ns.max_examples,
            max_bytes=ns.max_bytes,
        )
        code = EXIT_VALID if result.status == "valid" else EXIT_INVALID
    except FetchError as exc:
        result = ValidationResult(status="error", message=f"cannot read {exc}")
        code = EXIT_PERMANENT if exc.permanent else EXIT_TRANSIENT
    error = None if result.status == "valid" else result.message or result.describe_errors()
    termination.report(path, result.to_message(), error)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = termination.UsageParser(
        prog="graft dataset validate", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
