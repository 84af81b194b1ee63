"""The container images `make images` builds (hack/build-images.py), checked as tarballs and run.

Each image's tarball must pass `crane validate`, push as an OCI layout to a loopback registry,
carry the refs and labels Graft's settings name, and hold reproducible layers (sorted entries,
owners 0/0 but for the app user, mtimes no later than the image's creation). Then its layers
are unpacked into a temporary rootfs and its entrypoint runs there in private mount and pid
namespaces, chrooted, as the image's own non-root user: the operator prints its help and the
CRDs; the runtime builds the tiny model into a bind-mounted directory and serves it on
loopback. No image may hold a compiler.

The tests need root (unshare, chroot) and the tarballs in build/images (or $GRAFT_IMAGES_DIR):
`make images` builds them. Missing or broken images fail these tests; they never skip.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from graft import __version__
from graft.core import settings
from graft.dataplane.smallmodels import cache_dir

pytestmark = [pytest.mark.images, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(os.environ.get("GRAFT_IMAGES_DIR") or REPO / "build" / "images")
APP_UID = 65532
REFS = {
    "operator": settings.DEFAULT_OPERATOR_IMAGE,
    "runtime": settings.DEFAULT_REFERENCE_IMAGE,
}
TARBALLS = {
    "operator": IMAGES_DIR / f"graft-operator-{__version__}.tar",
    "runtime": IMAGES_DIR / f"graft-{__version__}.tar",
}
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "tcc", "ptxas")


@dataclass
class Image:
    name: str
    tarball: Path
    layout: Path
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    rootfs: Path | None = None
    layer_problems: list[str] = field(default_factory=list)

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]


class _Hashing(io.RawIOBase):
    """A read-only stream that hashes what is read through it."""

    def __init__(self, source: IO[bytes] | gzip.GzipFile) -> None:
        self.source = source
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        self.sha.update(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            chunks = []
            while chunk := self.source.read(1 << 20):
                self.sha.update(chunk)
                chunks.append(chunk)
            return b"".join(chunks)
        data = self.source.read(size)
        self.sha.update(data)
        return data

    def hexdigest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _fail_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root: unshare, chroot and mounts")


def crane() -> Path:
    binary = cache_dir() / "bin" / "crane"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing: `make images` builds it")
    return binary


def _open(name: str, workdir: Path) -> Image:
    tarball = TARBALLS[name]
    if not tarball.is_file():
        pytest.fail(f"{tarball} is missing: run `make images`")
    layout = workdir / "layout"
    with tarfile.open(tarball) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    manifest_path = layout / "blobs" / "sha256" / entry["digest"].split(":", 1)[1]
    manifest = json.loads(manifest_path.read_text())
    config_digest = manifest["config"]["digest"]
    config = json.loads((layout / "blobs" / "sha256" / config_digest.split(":", 1)[1]).read_text())
    return Image(name, tarball, layout, index, manifest, config)


def _unpack(image: Image, rootfs: Path) -> None:
    """Apply the layers in order, noting every entry that breaks the reproducibility rules."""
    created = calendar.timegm(time.strptime(image.config["created"], "%Y-%m-%dT%H:%M:%SZ"))
    rootfs.mkdir()
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(image.manifest["layers"])
    for layer, diff_id in zip(image.manifest["layers"], diff_ids, strict=True):
        previous: tuple[str, ...] = ()
        with (
            open(image.blob(layer["digest"]), "rb") as raw,
            _Hashing(raw) as compressed,
            gzip.GzipFile(fileobj=compressed) as gz,
            _Hashing(gz) as uncompressed,
            tarfile.open(fileobj=uncompressed, mode="r|") as tar,
        ):
            for member in tar:
                problem = ""
                key = tuple(member.name.split("/"))
                owner = (member.uid, member.gid)
                app_owned = member.name == "home/graft" or member.name.startswith("home/graft/")
                if previous and key <= previous:
                    problem = f"not sorted after {'/'.join(previous)}"
                elif owner != ((APP_UID, APP_UID) if app_owned else (0, 0)):
                    problem = f"owner {member.uid}:{member.gid}"
                elif member.mtime > created:
                    problem = f"mtime {member.mtime} after {created}"
                if problem:
                    image.layer_problems.append(f"{layer['digest'][:19]} {member.name}: {problem}")
                previous = key
                if os.path.basename(member.name).startswith(".wh."):
                    continue  # Graft's layers only add files
                tar.extract(member, rootfs, numeric_owner=True, filter="fully_trusted")
            uncompressed.read()  # the tar's zero padding, which diff_id covers too
            compressed.read()
        # What `crane validate` checks of each layer, done here in the same pass.
        image.layer_problems += [
            f"{what} {got} != {want}"
            for what, got, want in (
                ("digest", compressed.hexdigest(), layer["digest"]),
                ("diff_id", uncompressed.hexdigest(), diff_id),
            )
            if got != want
        ]
    image.rootfs = rootfs


def _load(name: str, tmp_path_factory: pytest.TempPathFactory) -> Image:
    _fail_unless_root()
    workdir = tmp_path_factory.mktemp(f"image-{name}")
    opened = _open(name, workdir)
    _unpack(opened, workdir / "rootfs")
    return opened


# An unpacked runtime image is several GB; pytest keeps the last three sessions' temporary
# directories, so a CI machine that runs the suite again and again would fill its disk.
# Each unpacked image is removed when the session ends.
@pytest.fixture(scope="session")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    image = _load("operator", tmp_path_factory)
    yield image
    assert image.rootfs is not None
    shutil.rmtree(image.rootfs.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def runtime_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    image = _load("runtime", tmp_path_factory)
    yield image
    assert image.rootfs is not None
    shutil.rmtree(image.rootfs.parent, ignore_errors=True)


@pytest.fixture(params=["operator", "runtime"])
def image(request: pytest.FixtureRequest) -> Image:
    loaded: Image = request.getfixturevalue(f"{request.param}_image")
    return loaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def in_image(
    image: Image,
    argv: list[str] | None = None,
    *,
    binds: dict[str, Path] | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The command that runs `argv` (default: the image's entrypoint and cmd; a list starting
    with a flag or subcommand is appended to the entrypoint) in the unpacked image: private
    mount and pid namespaces, /proc and /dev, chroot as the image's user, the image's env and
    working directory."""
    assert image.rootfs is not None
    cfg = image.config["config"]
    entrypoint = cfg.get("Entrypoint") or []
    if argv is None:
        argv = [*entrypoint, *(cfg.get("Cmd") or [])]
    elif not argv[0].startswith("/"):
        argv = [*entrypoint, *argv]
    user = cfg["User"]
    root = image.rootfs
    script = ["set -e", f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}"]
    for target, source in (binds or {}).items():
        dest = root / target.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        script.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(dest))}")
    variables = [*cfg.get("Env", []), *(f"{k}={v}" for k, v in (env or {}).items())]
    uid, _, gid = user.partition(":")
    inner = ["chroot", f"--userspec={uid}:{gid or uid}", f"--groups={gid or uid}", str(root)]
    inner += ["/usr/bin/env", "-i", "-C", cfg.get("WorkingDir") or "/", *variables, *argv]
    script.append("exec " + shlex.join(inner))
    return [
        "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
        f"--mount-proc={root / 'proc'}", "sh", "-c", "\n".join(script),
    ]  # fmt: skip


def run_in(image: Image, argv: list[str] | None = None, **kwargs: Any) -> str:
    result = subprocess.run(
        in_image(image, argv, **kwargs), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result.stdout


# --- the tarballs ----------------------------------------------------------------------------


def test_tarball_passes_crane_validate(image: Image) -> None:
    """Docker's manifest.json view of the tarball. The runtime's 2.8 GB of layers take crane
    minutes to digest, so for it only --fast: the image fixture has checked every layer's
    digest and diff_id while unpacking (test_layers_are_reproducible_tars)."""
    fast = ["--fast"] if image.name == "runtime" else []
    result = subprocess.run(
        [str(crane()), "validate", *fast, "--tarball", str(image.tarball)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout + result.stderr


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """`crane registry serve` on loopback, in memory."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(crane()), "registry", "serve", "--address", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    yield address
    server.terminate()
    server.wait(timeout=10)


def test_oci_layout_pushes_and_validates(image: Image, registry: str) -> None:
    """The layout itself (not Docker's manifest.json) as a registry sees it: same digest. The
    registry checks every blob's digest on upload; validate then checks the rest."""
    ref = f"{registry}/{image.name}:{__version__}"
    tool = str(crane())
    subprocess.run([tool, "push", str(image.layout), ref], check=True, capture_output=True)
    check = subprocess.run(
        [tool, "validate", "--fast", "--remote", ref], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    digest = subprocess.run(
        [tool, "digest", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert digest == image.index["manifests"][0]["digest"]


def test_refs_labels_and_user_come_from_graft(image: Image) -> None:
    (entry,) = image.index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == REFS[image.name]
    assert REFS[image.name].endswith(f":{__version__}")
    labels = image.config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.title"] == REFS[image.name].split("/")[-1].split(":")[0]
    assert image.config["config"]["User"] == f"{APP_UID}:{APP_UID}"
    assert image.config["config"]["Entrypoint"] == ["/opt/graft/bin/graft"]


def test_layers_are_reproducible_tars(image: Image) -> None:
    assert image.layer_problems == []


def test_no_compilers_caches_or_apt_lists(image: Image) -> None:
    assert image.rootfs is not None
    root = image.rootfs
    bin_dirs = ["usr/bin", "usr/sbin", "usr/local/bin", "bin", "sbin", "opt/graft/bin"]
    found = [f"{d}/{c}" for d in bin_dirs for c in COMPILERS if os.path.lexists(root / d / c)]
    found += [str(p.relative_to(root)) for p in (root / "usr/bin").glob("gcc-*")]
    assert found == [], f"compilers in the image: {found}"
    assert list((root / "var/lib/apt/lists").glob("*Packages*")) == []
    assert list((root / "var/cache/apt/archives").glob("*.deb")) == []
    assert not (root / "root/.cache").exists()
    assert not (root / "home/graft/.cache").exists()
    site = root / "opt/graft/lib/python3.11/site-packages"
    assert (site / "graft").is_dir()
    assert not (site / "pip").exists(), "pip is a build tool: it must not ship"
    man = root / "usr/share/man"
    assert not man.exists() or not any(man.iterdir())


def test_runs_as_the_non_root_user(image: Image) -> None:
    out = run_in(
        image, ["/opt/graft/bin/python", "-c", "import os; print(os.getuid(), os.getgid())"]
    )
    assert out.split() == [str(APP_UID), str(APP_UID)]


# --- what each image runs --------------------------------------------------------------------


def test_operator_image_prints_help_and_crds(operator_image: Image, tmp_path: Path) -> None:
    image = operator_image
    out = run_in(image, ["--help"])
    assert "run" in out
    assert "crds" in out
    crds = tmp_path / "crds"
    crds.mkdir()
    crds.chmod(0o777)
    run_in(image, ["crds", "--output", "/out"], binds={"/out": crds})
    written = {p.name: p.read_text() for p in crds.iterdir()}
    expected = {p.name: p.read_text() for p in (REPO / "crds").iterdir() if p.is_file()}
    assert written == expected
    for kind in ("Account", "User", "Model", "Deployment", "DeployedModel", "Dataset"):
        assert any(f"kind: {kind}\n" in text for text in written.values()), kind
    assert any("FineTuningJob" in text for text in written.values())


RUNTIME_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def runtime_work(runtime_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the image's user can write, bind-mounted at /work, with the tiny model
    built there by the image itself (torch, transformers and tokenizers of the image)."""
    work = tmp_path_factory.mktemp("runtime-work")
    work.chmod(0o777)
    run_in(
        runtime_image,
        ["/opt/graft/bin/python", "-m", "graft.dataplane.smallmodels", "tiny", "/work/tiny"],
        binds={"/work": work},
        env=RUNTIME_ENV,
    )
    dataset = work / "chat.jsonl"
    with dataset.open("w") as f:
        for i in range(8):
            messages = [
                {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": "alpha alpha"},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return work


def test_runtime_image_serves_the_tiny_model(runtime_image: Image, runtime_work: Path) -> None:
    image = runtime_image
    port = _free_port()
    args = ["serve", "--model", "/work/tiny", "--served-model-name", "tiny"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--uvicorn-log-level", "warning"]
    log = runtime_work / f"serve-{port}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            in_image(image, args, binds={"/work": runtime_work}, env=RUNTIME_ENV),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        body = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and body is None:
            assert server.poll() is None, f"graft serve exited:\n{log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, f"graft serve never answered:\n{log.read_text()[-4000:]}"
        assert [m["id"] for m in body["data"]] == ["tiny"]
    finally:
        # The whole group: unshare itself ignores SIGTERM while it waits for its child.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_runtime_image_trains_an_adapter(runtime_image: Image, runtime_work: Path) -> None:
    """A few LoRA steps on CPU: backward passes and peft work without triton."""
    args = ["train", "--base-model", "/work/tiny", "--dataset", "/work/chat.jsonl"]
    args += ["--output", "/work/adapter", "--max-steps", "3", "--batch-size", "4"]
    args += ["--lora-rank", "4", "--termination-message-path", "/work/train.json"]
    run_in(runtime_image, args, binds={"/work": runtime_work}, env=RUNTIME_ENV)
    assert (runtime_work / "adapter" / "adapter_config.json").is_file()
    assert (runtime_work / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((runtime_work / "train.json").read_text())


def test_runtime_image_validates_a_dataset(runtime_image: Image, runtime_work: Path) -> None:
    args = ["dataset", "validate", "/work/chat.jsonl", "--format", "chat"]
    args += ["--termination-message-path", "/work/validate.json"]
    run_in(runtime_image, args, binds={"/work": runtime_work}, env=RUNTIME_ENV)
    result = json.loads((runtime_work / "validate.json").read_text())
    assert result["exampleCount"] == 8, result
