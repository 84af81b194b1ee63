"""`graft model inspect SOURCE`: read an addon's adapter_config.json and report its LoRA rank.

The entrypoint of a Model's inspection Job, which runs in the Model's own namespace: the
operator itself never reads what a tenant names (a URI could point at cloud metadata or an
internal service, and the result would be an oracle). SOURCE is the addon's directory as a
path (a mounted PVC), a file:// or pvc:// URI, an http(s):// URL or an s3:// prefix (see
graft.dataplane.fetch); `adapter_config.json` is read from inside it, at most 1 MiB. hf://
repositories are read with the huggingface_hub package when the image has it.

The result goes to stdout and to the container's termination message as one compact JSON
object (graft.api.reports.InspectionResult): the rank `r` and `target_modules`. Exit codes: 0 a
usable adapter config; 1 it is not one, or it cannot be read and retrying will not help; 2
invalid command line; 3 reading failed and a retry may help (network).
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from graft.api.reports import InspectionResult
from graft.dataplane import termination
from graft.dataplane.fetch import (
    EXIT_PERMANENT,
    EXIT_TRANSIENT,
    FetchError,
    local_path,
    open_source,
)

ADAPTER_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20
EXIT_VALID = 0
EXIT_INVALID = 1


def config_location(source: str) -> str:
    """Where adapter_config.json of the addon at `source` is: inside the directory, with the
    URI's query (a presigned URL's signature) kept where it belongs."""
    path = local_path(source) if urllib.parse.urlparse(source).scheme != "hf" else None
    if path is not None:
        return str(path / ADAPTER_CONFIG)
    parsed = urllib.parse.urlparse(source)
    if parsed.fragment:
        raise FetchError(f"{source}: a source URI cannot have a #fragment", permanent=True)
    joined = parsed.path.rstrip("/") + "/" + ADAPTER_CONFIG
    return urllib.parse.urlunparse(parsed._replace(path=joined))


def read_config(source: str) -> bytes:
    """The bytes of the addon's adapter_config.json (FetchError when they cannot be read)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "hf":
        return _read_hf(source)
    with open_source(config_location(source)) as src:
        if src.size is not None and src.size > MAX_CONFIG_BYTES:
            raise FetchError(
                f"{ADAPTER_CONFIG} of {source} is {src.size} bytes; at most "
                f"{MAX_CONFIG_BYTES} are read",
                permanent=True,
            )
        data = src.stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise FetchError(
            f"{ADAPTER_CONFIG} of {source} is over {MAX_CONFIG_BYTES} bytes", permanent=True
        )
    return data


def _read_hf(source: str) -> bytes:
    parsed = urllib.parse.urlparse(source)
    repo = (parsed.netloc + parsed.path).strip("/")
    if repo.count("/") != 1:
        raise FetchError(f"{source}: expected hf://<org>/<name>", permanent=True)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FetchError(
            f"{source}: hf:// needs the huggingface_hub package, which this image lacks",
            permanent=True,
        ) from None
    try:
        path = hf_hub_download(repo_id=repo, filename=ADAPTER_CONFIG)
    except Exception as exc:  # the hub client raises many types; all end up here
        status = getattr(getattr(exc, "response", None), "status_code", None)
        permanent = isinstance(status, int) and 400 <= status < 500
        raise FetchError(f"{source}: {type(exc).__name__}: {exc}", permanent=permanent) from None
    with open(path, "rb") as f:
        return f.read(MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES]


def judge(source: str, data: bytes) -> InspectionResult:
    """What the bytes of an adapter_config.json say: a rank >= 1 is required, target modules
    are reported when present."""
    where = f"{source}/{ADAPTER_CONFIG}"
    try:
        config: Any = json.loads(data)
    except ValueError as exc:
        return InspectionResult("invalid", message=f"{where} is not JSON: {exc}")
    if not isinstance(config, dict):
        return InspectionResult("invalid", message=f"{where} is not a JSON object")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        return InspectionResult(
            "invalid", message=f"{where} has no valid LoRA rank r (got {rank!r})"
        )
    modules = config.get("target_modules")
    if isinstance(modules, list):
        targets = tuple(sorted(str(m) for m in modules))
    elif isinstance(modules, str):
        targets = (modules,)
    else:
        targets = ()
    return InspectionResult("valid", lora_rank=rank, target_modules=targets)


def inspect(source: str) -> InspectionResult:
    """Read and judge the adapter at `source` (FetchError when it cannot be read)."""
    return judge(source, read_config(source))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="the addon's directory: path, file://, pvc://, http(s)://, s3:// or hf:// URI",
    )
    termination.add_argument(parser)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `model inspect` to the `graft` command line."""
    model = sub.add_parser("model", help="work with model artifacts")
    commands = model.add_subparsers(title="model commands", metavar="COMMAND")
    parser = commands.add_parser(
        "inspect",
        help="read an addon's adapter_config.json; print its LoRA rank and target modules",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    path = termination.message_path(ns.termination_message_path)
    try:
        result = inspect(ns.source)
        code = EXIT_VALID if result.status == "valid" else EXIT_INVALID
    except FetchError as exc:
        result = InspectionResult(status="error", message=f"cannot read {exc}")
        code = EXIT_PERMANENT if exc.permanent else EXIT_TRANSIENT
    error = None if result.status == "valid" else result.message
    termination.report(path, result.to_message(), error)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = termination.UsageParser(
        prog="graft model inspect", description=(__doc__ or "").split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
