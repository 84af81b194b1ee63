#!/usr/bin/env python3
"""Replace deploy/argocd's health-check fixtures with real objects dumped by the integration tests.

    GRAFT_DUMP_FIXTURES=/tmp/fixtures pytest -m integration   # tests/harness/dump.py writes them
    python3 hack/argocd-fixtures.py /tmp/fixtures             # copy them in, fix the messages

For every dumped object, `deploy/argocd/graft.dev/<Kind>/testdata/<name>.yaml` is overwritten.
A case of that kind's health_test.yaml keeps the status a person chose for it; only the text of
its message that came from the old fixture's Ready condition (reason and message) is replaced by
the new fixture's. A dumped fixture with no case yet is listed at the end: add its case by hand
(what Argo CD should say is a decision, not something to copy from the script's output), then
run tests/unit/test_argocd_health.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARGOCD = ROOT / "deploy" / "argocd" / "graft.dev"


class _Dumper(yaml.SafeDumper):
    """Multi-line messages as literal blocks, as a person writes them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


def ready(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of the object's Ready condition, if it has one."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("reason") or ""), str(cond.get("message") or "")
    return None


def refresh(dumped: Path) -> list[str]:
    """Copy every dumped fixture in; return the ones that have no health_test.yaml case."""
    missing = []
    for src in sorted(dumped.glob("graft.dev/*/testdata/*.yaml")):
        kind = src.parent.parent.name
        target = ARGOCD / kind / "testdata" / src.name
        tests_file = ARGOCD / kind / "health_test.yaml"
        cases = yaml.safe_load(tests_file.read_text())
        case = next((c for c in cases["tests"] if c["inputPath"] == f"testdata/{src.name}"), None)
        new = yaml.safe_load(src.read_text())
        if case is not None and target.exists():
            before, after = ready(yaml.safe_load(target.read_text())), ready(new)
            message = case["healthStatus"].get("message", "")
            if before and after and before != after:
                message = message.replace(before[1], after[1]).replace(
                    f"{before[0]}:", f"{after[0]}:"
                )
                case["healthStatus"]["message"] = message
                tests_file.write_text(dump(cases))
        target.write_text(src.read_text())
        if case is None:
            missing.append(f"{kind}/testdata/{src.name}")
    return missing


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    missing = refresh(Path(argv[0]))
    for path in missing:
        print(f"no case in health_test.yaml yet: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
