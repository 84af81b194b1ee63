"""The operator benchmark's smoke run (`bench/operatorscale.py --quick`, issue 14) prints every
figure with a plausible value.

It runs on a control plane of its own (its own state directory and ports): the benchmark
starts an operator that reconciles every namespace, kills it with -9 and deletes objects with
it stopped, none of which may happen next to the session's operator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from harness.kube import CACHE, ROOT, free_port

PORT_VARIABLES = (
    "GRAFT_ETCD_PORT",
    "GRAFT_ETCD_PEER_PORT",
    "GRAFT_APISERVER_PORT",
    "GRAFT_CONTROLLER_MANAGER_PORT",
    "GRAFT_SCHEDULER_PORT",
    "GRAFT_KWOK_PORT",
)
NUMBER = re.compile(r"^-?\d+(\.\d+)?( s)?$")


def tables(output: str) -> dict[str, list[list[str]]]:
    """figure -> its rows (cells), from the `figure: title` lines and the | tables under them."""
    found: dict[str, list[list[str]]] = {}
    figure = None
    for line in output.splitlines():
        if match := re.match(r"^(\w+): ", line):
            figure = match.group(1)
        elif figure and line.startswith("| ") and not line.startswith("| N |"):
            found.setdefault(figure, []).append([c.strip() for c in line.strip("|").split("|")])
    return found


def value(rows: list[list[str]], label: str) -> str:
    hits = [row[-1] for row in rows if row[1].startswith(label)]
    assert hits, f"no row {label!r} in {rows}"
    return hits[0]


def number(cell: str) -> float:
    assert NUMBER.match(cell), f"{cell!r} is not a number"
    return float(cell.removesuffix(" s"))


def test_quick_run_prints_every_figure(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GRAFT_CACHE_DIR": str(tmp_path),
        "GRAFT_BIN_DIR": os.environ.get("GRAFT_BIN_DIR") or str(CACHE / "bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "tests")]),
        **{variable: str(free_port()) for variable in PORT_VARIABLES},
    }
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "operatorscale.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "nan" not in out.lower().split(), out
    assert "command: operatorscale.py --quick" in out
    assert "load average" in out
    found = tables(out)
    assert set(found) == {
        "overhead",
        "idle",
        "memory",
        "restart",
        "writes",
        "delete",
        "addons",
    }, out

    [overhead] = found["overhead"]
    assert overhead[0] == "10"
    assert number(overhead[1]) > 0, out
    assert number(overhead[2]) > 0, out
    assert number(overhead[3]) > 0, out

    idle = found["idle"]
    assert number(value(idle, "reads")) > 0, out  # the resync reads, at least
    assert number(value(idle, "writes")) >= 0, out

    memory = found["memory"]
    assert len(memory) == 4, out
    for row in memory:
        assert 20 < number(row[2]) < 2000, out  # MB of a Python process

    restart = found["restart"]
    assert number(value(restart, "duplicate pods")) == 0, out
    assert number(value(restart, "seconds until every Deployment re-checked (10/10)")) > 0, out
    assert number(value(restart, "seconds until the new operator is live")) > 0, out

    writes = found["writes"]
    per_deployment = value(writes, "all writes / reads per Deployment")
    assert all(number(v) > 0 for v in per_deployment.split(" / ")), out
    assert number(value(writes, "create pods")) == 1, out  # one pod per Deployment, once
    assert number(value(writes, "writes/min to a Model whose deletion")) >= 0, out

    [delete] = found["delete"]
    assert delete[2].startswith(("done in", "NOT done")), out
    assert "not measured" in found["addons"][0][2]
