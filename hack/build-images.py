#!/usr/bin/env python3
"""Builds Graft's container images as OCI image-layout tarballs, without Docker or a registry.

    hack/build-images.py [--out build/images] [--only operator|runtime]   build (default)
    hack/build-images.py lock                                              re-pin hack/images/*.lock

Two images, named in operator/graft/core/settings.py:

- the operator (`graft run`): Debian + python3.11 + Graft with its base dependencies;
- the runtime of Graft's own pods (`graft serve|train|fetch|dataset validate`): the same plus the
  train and serve extras (torch & co.).

Each image has three gzip layers, the first shared by both and the last identical in both:

1. base:  a Debian rootfs from `debootstrap --variant=minbase` (debootstrap itself comes from
          `apt-get download` and runs from an extracted directory), python3.11, ca-certificates,
          the user graft (65532); no apt lists, logs, docs or man pages;
2. deps:  the virtualenv /opt/graft with the pinned wheels of hack/images/<image>.lock, installed
          in a chroot by pip with --no-index (pip itself is not left in the image);
3. graft: Graft's own wheel, built from this checkout, installed into the same virtualenv.

Tarballs are reproducible: entries sorted, owners 0/0 (65532 for /home/graft), mtimes clamped
to SOURCE_DATE_EPOCH (base and deps layers: the last commit that changed hack/images/; the
graft layer and config: the last commit), gzip without timestamps, bytecode by hash rather
than by mtime. The tarball holds an OCI layout (oci-layout, index.json, blobs/) and a Docker
manifest.json, so `crane push`, `crane validate --tarball`, `docker load` and `podman load` all
take it.

Everything slow is cached in ~/.cache/graft/images (or $GRAFT_CACHE_DIR/images), keyed by its
inputs: the rootfs by suite, mirror and packages; the wheelhouse by the lock files; each deps
virtualenv and its compressed layer by the rootfs and lock. A warm build only rebuilds the
graft layer and rewrites the tarballs. Each stage prints how long it took.

Needs root (debootstrap, chroot, mount namespaces), python3 with pip, Go (for crane, built from
its module into ~/.cache/graft/bin like the control plane's binaries) and network access to
deb.debian.org and PyPI on a cold cache.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "hack" / "images"
BUILD_LOCK = LOCK_DIR / "build.lock"
VERSIONS_ENV = REPO / "hack" / "versions.env"
IMAGE_ENV = LOCK_DIR / "image.env"
sys.path.insert(0, str(REPO / "operator"))

from graft import __version__  # noqa: E402
from graft.core import settings  # noqa: E402

# Bump to rebuild a cached stage whose recipe (not its inputs) changed.
ROOTFS_RECIPE = "1"
DEPS_RECIPE = "2"
LAYER_RECIPE = "1"  # how write_layer() makes a tar of a tree

APP_UID = 65532
APP_HOME = "/home/graft"
VENV = "/opt/graft"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
DEBIAN_PACKAGES = ("python3.11", "ca-certificates")
SOURCE_URL = "https://github.com/graft-dev/graft"

# Left out of the runtime image, though torch's wheel metadata asks for them. torch from PyPI
# links its CUDA libraries (nvidia-* wheels) even to run on CPU, so those stay; these do not
# load unless used: triton is torch.compile's GPU code generator (with its own ptxas, a
# compiler: ~1 GB), nvidia-cuda-cccl holds C++ headers. Graft never calls torch.compile.
RUNTIME_EXCLUDED = ("triton", "nvidia-cuda-cccl")

# The wheels the image's interpreter takes (Debian bookworm: CPython 3.11, glibc 2.36), whatever
# Python runs this script; the lock's hashes then pick the very files it pinned.
IMAGE_WHEEL_TAGS = [
    "--python-version", "3.11", "--implementation", "cp",
    "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    *(f"--platform=manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "--platform=manylinux2014_x86_64", "--platform=manylinux2010_x86_64",
    "--platform=manylinux1_x86_64", "--platform=linux_x86_64", "--platform=any",
]  # fmt: skip

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
GZIP_LEVEL = 6


@dataclasses.dataclass(frozen=True)
class Image:
    key: str  # operator | runtime
    ref: str
    extras: tuple[str, ...]
    cmd: tuple[str, ...]
    title: str
    description: str

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def filename(self) -> str:
        return f"{self.repository.rsplit('/', 1)[-1]}-{__version__}.tar"

    @property
    def lock(self) -> Path:
        return LOCK_DIR / f"{self.key}.lock"


IMAGES = {
    "operator": Image(
        key="operator",
        ref=settings.DEFAULT_OPERATOR_IMAGE,
        extras=(),
        cmd=("run",),
        title="graft-operator",
        description="Graft's Kubernetes operator (graft run)",
    ),
    "runtime": Image(
        key="runtime",
        ref=settings.DEFAULT_REFERENCE_IMAGE,
        extras=("train", "serve"),
        cmd=("--help",),
        title="graft",
        description="Graft's model server, trainer, fetcher and dataset validator",
    ),
}


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log(f"{name} ...")
    start = time.monotonic()
    yield
    timings[name] = time.monotonic() - start
    log(f"{name}: {timings[name]:.1f}s")


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kwargs)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_of(*parts: str) -> str:
    return sha256_bytes("\0".join(parts).encode())[:16]


def versions() -> dict[str, str]:
    """hack/versions.env (crane) and hack/images/image.env (Debian, pip)."""
    found = {}
    for path in (VERSIONS_ENV, IMAGE_ENV):
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                found[name] = value
    return found


def cache_root() -> Path:
    if os.environ.get(settings.CACHE_DIR_ENV):
        return Path(os.environ[settings.CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "graft"


def git(*args: str) -> str:
    return run(["git", "-C", str(REPO), *args], capture_output=True).stdout.strip()


def commit_epoch(*paths: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the time of the last commit (touching `paths`, if any)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    rel = [str(p.relative_to(REPO)) for p in paths]
    out = git("log", "-1", "--format=%ct", *(["--", *rel] if rel else []))
    return int(out) if out else int(git("log", "-1", "--format=%ct"))


# --- crane -----------------------------------------------------------------------------------


def ensure_crane(v: dict[str, str]) -> Path:
    """crane from its Go module, cached in ~/.cache/graft/bin by version (like the control
    plane's binaries in hack/build-control-plane.sh)."""
    version = v["CRANE_VERSION"]
    bindir = cache_root() / "bin"
    binary = bindir / f"crane-{version}"
    if not os.access(binary, os.X_OK):
        log(f"building crane {version}")
        bindir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0")
        env.setdefault("GOFLAGS", "-buildvcs=false")
        with tempfile.TemporaryDirectory(dir=cache_root()) as gobin:
            env["GOBIN"] = gobin
            pkg = f"github.com/google/go-containerregistry/cmd/crane@{version}"
            run(["go", "install", "-trimpath", "-ldflags", "-s -w", pkg], env=env)
            shutil.move(os.path.join(gobin, "crane"), binary)
    link = bindir / "crane"
    if not link.is_symlink() or os.readlink(link) != binary.name:
        tmp = bindir / ".crane.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(binary.name)
        tmp.replace(link)
    return binary


# --- the Debian rootfs -----------------------------------------------------------------------


def debootstrap(cache: Path, v: dict[str, str]) -> tuple[Path, str]:
    """debootstrap's own package, extracted (not installed): the directory and its version."""
    home = cache / "debootstrap"
    done = home / "extracted"
    if not done.is_dir():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        run(["apt-get", "download", "-q", "debootstrap"], cwd=home, capture_output=True)
        (deb,) = home.glob("debootstrap_*.deb")
        run(["dpkg-deb", "-x", str(deb), str(home / "tmp")])
        (home / "tmp").rename(done)
    (deb,) = home.glob("debootstrap_*.deb")
    return done, deb.name


def build_rootfs(cache: Path, v: dict[str, str]) -> tuple[Path, float]:
    """The base rootfs (cached by its inputs) and the time its build started: files newer than
    that were made by the build, not unpacked from a package."""
    dbs_dir, dbs_version = debootstrap(cache, v)
    suite, mirror = v["DEBIAN_SUITE"], v["DEBIAN_MIRROR"]
    key = key_of(ROOTFS_RECIPE, suite, mirror, dbs_version, *DEBIAN_PACKAGES, str(APP_UID))
    dest = cache / f"rootfs-{suite}-{key}"
    stamp = cache / f"rootfs-{suite}-{key}.built"
    if stamp.is_file():
        return dest, float(stamp.read_text())
    started = time.time() - 1
    tmp = cache / f".rootfs-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, DEBOOTSTRAP_DIR=str(dbs_dir / "usr/share/debootstrap"))
    env["LC_ALL"] = "C"
    cmd = [str(dbs_dir / "usr/sbin/debootstrap"), "--variant=minbase"]
    cmd += [
        f"--include={','.join(DEBIAN_PACKAGES)}",
        "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
    ]
    cmd += [suite, str(tmp), mirror]
    log("$ " + shlex.join(cmd))
    with open(cache / f"{dest.name}.log", "w") as out:
        run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    finish_rootfs(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stamp.write_text(str(started))
    return dest, started


def finish_rootfs(root: Path) -> None:
    """The app user, then everything a container does not need or that differs run to run."""
    with open(root / "etc/passwd", "a") as f:
        f.write(f"graft:x:{APP_UID}:{APP_UID}:graft:{APP_HOME}:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"graft:x:{APP_UID}:\n")
    # Password ages count days since the build: blank them (no account here has a password).
    for name in ("etc/shadow", "etc/shadow-"):
        path = root / name
        if path.is_file():
            lines = []
            for line in path.read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2:
                    fields[2] = ""
                lines.append(":".join(fields))
            lines.append("graft:*::0:99999:7:::")
            path.write_text("\n".join(lines) + "\n")
    home = root / APP_HOME.lstrip("/")
    home.mkdir(parents=True)
    os.chown(home, APP_UID, APP_UID)
    # Keep a later `apt-get install` from bringing docs back (as Debian's slim images do).
    (root / "etc/dpkg/dpkg.cfg.d/graft-nodoc").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"
    )
    removed = [
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/archives/partial/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "var/cache/ldconfig/aux-cache",
        "var/log/*.log",
        "var/log/apt/*",
        "etc/machine-id",
        "etc/*-",  # passwd-, shadow-, group-: backups
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/lintian/*",
        "usr/share/locale/*",
        "root/.bash_history",
    ]
    for pattern in removed:
        for path in root.glob(pattern):
            if path.name == "locale.alias":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for doc in (root / "usr/share/doc").glob("*"):
        if doc.is_dir() and not doc.is_symlink():
            for item in doc.iterdir():
                if item.name != "copyright":
                    shutil.rmtree(
                        item
                    ) if item.is_dir() and not item.is_symlink() else item.unlink()
    for path in (root / "usr/bin").glob("*"):
        if path.name in ("gcc", "cc", "c++", "g++") or path.name.startswith("gcc-"):
            raise SystemExit(f"a compiler is in the base rootfs: {path}")


# --- wheels and virtualenvs ------------------------------------------------------------------


def pip_wheel(wheels: Path, v: dict[str, str]) -> Path:
    name = f"pip-{v['IMAGES_PIP_VERSION']}-py3-none-any.whl"
    if not (wheels / name).is_file():
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
             f"pip=={v['IMAGES_PIP_VERSION']}"])  # fmt: skip
    return wheels / name


def download_wheels(wheels: Path, locks: Sequence[Path]) -> None:
    """Every pinned wheel, verified by hash; files already there are checked, not fetched."""
    wheels.mkdir(parents=True, exist_ok=True)
    key = key_of(*(lock.read_text() for lock in locks))
    stamp = wheels / f".complete-{key}"
    if stamp.is_file():
        return
    for lock in locks:
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "--disable-pip-version-check", *IMAGE_WHEEL_TAGS,
             "-d", str(wheels), "-r", str(lock)])  # fmt: skip
    stamp.write_text("")


@contextlib.contextmanager
def chroot_session(root: Path, binds: dict[str, Path]) -> Iterator[list[str]]:
    """A command prefix that runs in `root` with host directories bind-mounted, in a private
    mount namespace so nothing stays mounted when it ends."""
    # Mount points this session makes, and removes after, so the rootfs (and the base layer
    # tarred from it) is the same whether or not a chroot session ran in it before.
    made = [target for target in binds if not (root / target.lstrip("/")).exists()]
    for target in made:
        (root / target.lstrip("/")).mkdir(parents=True)
    script = "set -e\n"
    for target, source in binds.items():
        script += f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(root / target.lstrip('/')))}\n"
    script += f'exec chroot {shlex.quote(str(root))} "$@"\n'
    try:
        yield ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "chroot"]
    finally:
        for target in reversed(made):
            with contextlib.suppress(OSError):
                (root / target.lstrip("/")).rmdir()


# No implicit bytecode: setuptools' distutils-precedence.pth imports _distutils_hack at every
# start, which would leave a timestamp-checked .pyc holding the install time.
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def pip_in_chroot(v: dict[str, str]) -> list[str]:
    pip = f"/wheels/pip-{v['IMAGES_PIP_VERSION']}-py3-none-any.whl/pip"
    return [f"{VENV}/bin/python", pip, "install", "--no-index", "--find-links", "/wheels",
            "--no-deps", "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
            "--root-user-action", "ignore", "--no-warn-script-location", "-q"]  # fmt: skip


def compile_bytecode(prefix: list[str], directory: str, strip: str = "") -> None:
    """Bytecode checked by hash, not mtime: the same whatever the files' times, and never
    stale for the interpreter (which cannot write in the image as its non-root user)."""
    cmd = [*prefix, f"{VENV}/bin/python", "-m", "compileall", "-q", "-f", "-j", "0"]
    cmd += ["--invalidation-mode", "unchecked-hash"]
    if strip:
        cmd += ["-s", strip, "-p", "/"]
    result = subprocess.run(
        [*cmd, directory], check=False, text=True, env=CHROOT_ENV, capture_output=True
    )
    if result.returncode != 0:
        # Some packages ship files that are not Python 3 (templates, test data): warn only.
        failures = [line for line in result.stdout.splitlines() if line.startswith("***")]
        log(f"compileall: {len(failures)} file(s) not compiled (not Python 3 source)")


def build_deps(
    cache: Path, rootfs: Path, rootfs_key: str, image: Image, *, wheels: Path, v: dict[str, str]
) -> tuple[Path, str]:
    """The virtualenv with `image`'s pinned dependencies (cached): its directory and key."""
    lock = image.lock.read_text()
    key = key_of(DEPS_RECIPE, rootfs_key, lock, v["IMAGES_PIP_VERSION"])
    dest = cache / f"venv-{image.key}-{key}"
    if (dest / ".complete").is_file():
        return dest, key
    tmp = cache / f".venv-{image.key}-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with chroot_session(rootfs, {VENV: tmp, "/wheels": wheels, "/lock": LOCK_DIR}) as prefix:
        run([*prefix, "/usr/bin/python3.11", "-m", "venv", "--without-pip", VENV], env=CHROOT_ENV)
        run([*prefix, *pip_in_chroot(v), "--require-hashes", "-r", f"/lock/{image.key}.lock"],
            env=CHROOT_ENV)  # fmt: skip
        compile_bytecode(prefix, SITE_PACKAGES)
    (tmp / ".complete").write_text("")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest, key


def build_graft_wheel(work: Path, wheels: Path, epoch: int) -> Path:
    """Graft's wheel, built from a copy of the checkout's package sources (so stale build/
    directories never leak in), with setuptools from the wheelhouse."""
    src = work / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copy2(REPO / "README.md", src)
    shutil.copytree(
        REPO / "operator", src / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )  # fmt: skip
    out = work / "dist"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(wheels))  # fmt: skip
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(out), str(src)], env=env)  # fmt: skip
    (wheel,) = out.glob("graft_operator-*.whl")
    return wheel


def build_graft_tree(rootfs: Path, deps: Path, wheel: Path, *, wheels: Path, v: dict[str, str],
                     work: Path) -> Path:  # fmt: skip
    """Graft installed with `--root`: a tree holding only Graft's files under /opt/graft."""
    stage_dir = work / "graft-root"
    stage_dir.mkdir()
    binds = {VENV: deps, "/wheels": wheels, "/graft-wheel": wheel.parent, "/stage": stage_dir}
    with chroot_session(rootfs, binds) as prefix:
        run([*prefix, *pip_in_chroot(v), "--root", "/stage", f"/graft-wheel/{wheel.name}"],
            env=CHROOT_ENV)  # fmt: skip
        compile_bytecode(prefix, f"/stage{SITE_PACKAGES}/graft", strip="/stage")
    return stage_dir


# --- layers ----------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes, counts and forwards what it is given."""

    def __init__(self, sink: IO[bytes] | None) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += len(view)
        if self.sink is not None:
            self.sink.write(view)
        return len(view)


class _Tee(io.RawIOBase):
    def __init__(self, *sinks: IO[bytes] | _Hashing) -> None:
        self.sinks = sinks

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(memoryview(data))


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str  # sha256:... of the gzip blob
    diff_id: str  # sha256:... of the tar
    size: int  # compressed
    tar_size: int
    path: Path
    created_by: str


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of everything under root, parents first, sorted by name."""
    stack = [("", root)]
    while stack:
        name, path = stack.pop()
        if name:
            yield name, path
        if path.is_dir() and not path.is_symlink():
            children = sorted(os.listdir(path), reverse=True)
            stack.extend((f"{name}/{c}" if name else c, path / c) for c in children)


# Only the directories themselves: the runtime mounts these.
_EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "var/tmp")


def write_layer(blobs: Path, trees: Sequence[tuple[str, Path]], epoch: int, made_after: float,
                created_by: str) -> Layer:  # fmt: skip
    """A gzip tar of `trees` (archive prefix, directory): sorted, owners 0/0 (the app user's
    files keep theirs), mtimes after `made_after` clamped to `epoch`."""
    blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    with os.fdopen(fd, "wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=GZIP_LEVEL, mtime=0,
                           filename="") as gz:  # fmt: skip
            uncompressed = _Hashing(None)
            sink = io.BufferedWriter(_Tee(gz, uncompressed), buffer_size=1 << 20)  # type: ignore[arg-type]
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                seen: dict[tuple[int, int], str] = {}
                for prefix, root in trees:
                    if prefix:
                        parts = prefix.split("/")
                        for i in range(1, len(parts) + 1):
                            info = tarfile.TarInfo("/".join(parts[:i]))
                            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
                            tar.addfile(info)
                    for name, path in _entries(root):
                        arc = f"{prefix}/{name}" if prefix else name
                        if any(arc.startswith(f"{d}/") for d in _EMPTY_DIRS):
                            continue
                        if name == ".complete":
                            continue
                        _add(tar, arc, path, epoch=epoch, made_after=made_after, seen=seen)
            sink.flush()
    digest = "sha256:" + compressed.digest.hexdigest()
    final = blobs / digest.split(":")[1]
    os.replace(tmp_name, final)
    return Layer(digest, "sha256:" + uncompressed.digest.hexdigest(), compressed.size,
                 uncompressed.size, final, created_by)  # fmt: skip


def _add(tar: tarfile.TarFile, arc: str, path: Path, *, epoch: int, made_after: float,
         seen: dict[tuple[int, int], str]) -> None:  # fmt: skip
    st = path.lstat()
    info = tarfile.TarInfo(arc)
    info.mode = st.st_mode & 0o7777
    info.mtime = epoch if st.st_mtime >= made_after else min(int(st.st_mtime), epoch)
    app = st.st_uid == APP_UID
    info.uid = info.gid = APP_UID if app else 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in seen:
            info.type, info.linkname = tarfile.LNKTYPE, seen[inode]
            tar.addfile(info)
            return
        seen[inode] = arc
        info.size = st.st_size
        with open(path, "rb") as f:
            tar.addfile(info, f)
    # Device nodes, sockets and fifos have no place in an image layer.


def prune(cache: Path, keep: set[str], layer_keys: set[str]) -> None:
    """Drop what this build did not use: rootfs and virtualenvs of older inputs, and layers
    of older inputs or times (the wheelhouse stays: pip checks it against the locks)."""
    freed = 0
    candidates = [*cache.glob("rootfs-*"), *cache.glob("venv-*"), *(cache / "blobs").glob("*")]
    candidates += [p for p in (cache / "layers").glob("*.json") if p.stem not in layer_keys]
    for path in candidates:
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            freed += sum(f.lstat().st_size for f in path.rglob("*"))
            shutil.rmtree(path)
        else:
            freed += path.lstat().st_size
            path.unlink()
    if freed:
        log(f"pruned {freed / 1e6:.0f} MB of older cache entries from {cache}")


def cached_layer(cache: Path, key: str, build: Any) -> Layer:
    """A layer from the cache's index by `key`, else `build()`, recorded."""
    index = cache / "layers" / f"{key}.json"
    if index.is_file():
        data = json.loads(index.read_text())
        path = cache / "blobs" / data["digest"].split(":")[1]
        if path.is_file() and path.stat().st_size == data["size"]:
            return Layer(**{**data, "path": path})
    layer: Layer = build()
    index.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(layer)
    data.pop("path")
    index.write_text(json.dumps(data, sort_keys=True))
    return layer


# --- config, manifest, tarball ---------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_blobs(image: Image, layers: Sequence[Layer], epoch: int, revision: str
                ) -> tuple[bytes, bytes, dict[str, str]]:  # fmt: skip
    labels = {
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.title": image.title,
        "org.opencontainers.image.description": image.description,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": rfc3339(epoch),
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": rfc3339(epoch),
        "config": {
            "User": f"{APP_UID}:{APP_UID}",
            "Env": [
                f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"HOME={APP_HOME}",
                "LANG=C.UTF-8",
                "PYTHONUNBUFFERED=1",
                "PYTHONDONTWRITEBYTECODE=1",
            ],
            "Entrypoint": [f"{VENV}/bin/graft"],
            "Cmd": list(image.cmd),
            "WorkingDir": APP_HOME,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": rfc3339(epoch), "created_by": layer.created_by} for layer in layers
        ],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": "sha256:" + sha256_bytes(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
        "annotations": labels,
    }
    return config_bytes, canonical(manifest), labels


def write_tarball(dest: Path, image: Image, layers: Sequence[Layer], *, config: bytes,
                  manifest: bytes, epoch: int) -> str:  # fmt: skip
    """The OCI layout (plus Docker's manifest.json) as one tar; returns the manifest digest."""
    manifest_digest = "sha256:" + sha256_bytes(manifest)
    config_digest = "sha256:" + sha256_bytes(config)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "org.opencontainers.image.ref.name": image.ref,
                    "io.containerd.image.name": image.ref,
                },
            }
        ],
    }
    docker = [
        {
            "Config": f"blobs/sha256/{config_digest.split(':')[1]}",
            "RepoTags": [image.ref],
            "Layers": [f"blobs/sha256/{layer.digest.split(':')[1]}" for layer in layers],
        }
    ]
    files: dict[str, bytes | Path] = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
        "manifest.json": canonical(docker),
        f"blobs/sha256/{manifest_digest.split(':')[1]}": manifest,
        f"blobs/sha256/{config_digest.split(':')[1]}": config,
    }
    for layer in layers:
        files[f"blobs/sha256/{layer.digest.split(':')[1]}"] = layer.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, epoch
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with open(content, "rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    tmp.replace(dest)
    return manifest_digest


# --- lock ------------------------------------------------------------------------------------


def lock(_: argparse.Namespace) -> int:
    """Resolve each image's dependencies from pyproject.toml (wheels only, for this Python) and
    pin them with their hashes, leaving out RUNTIME_EXCLUDED."""
    if sys.version_info[:2] != (3, 11):
        # The resolution follows the running interpreter: it must be the image's.
        raise SystemExit(
            "lock with Python 3.11, the images' Python: make images-lock PYTHON=python3.11"
        )
    build_reqs = ("setuptools>=77", "wheel")
    targets: list[tuple[Path, list[str], str, tuple[str, ...]]] = [
        (
            image.lock,
            [f"{REPO}[{','.join(image.extras)}]" if image.extras else str(REPO)],
            f"{image.ref}: pyproject.toml"
            + (f" [{','.join(image.extras)}]" if image.extras else ""),
            RUNTIME_EXCLUDED if image.key == "runtime" else (),
        )
        for image in IMAGES.values()
    ]
    targets.append((BUILD_LOCK, list(build_reqs), "building Graft's wheel offline", ()))
    for path, reqs, what, excluded in targets:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                 "--only-binary=:all:", "--disable-pip-version-check", "--report", str(report),
                 *reqs])  # fmt: skip
            installs = json.loads(report.read_text())["install"]
        lines = [f"# {what}; pinned by `hack/build-images.py lock` (make images-lock)."]
        if excluded:
            lines.append(
                f"# Left out (RUNTIME_EXCLUDED in hack/build-images.py): {', '.join(excluded)}."
            )
        pins = []
        for item in installs:
            meta = item["metadata"]
            name = meta["name"].lower().replace("_", "-")
            if name == "graft-operator" or name in excluded:
                continue
            sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
            pins.append(f"{name}=={meta['version']} --hash=sha256:{sha}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([*lines, *sorted(pins)]) + "\n")
        log(f"{path.relative_to(REPO)}: {len(pins)} pins")
    return 0


# --- build -----------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("building images needs root (debootstrap, chroot, mount namespaces)")
    timings: dict[str, float] = {}
    total_start = time.monotonic()
    v = versions()
    cache = cache_root() / "images"
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve()
    selected = [IMAGES[k] for k in (args.only or IMAGES)]
    revision = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        log("warning: the checkout has uncommitted changes; the revision label is HEAD's")
    head_epoch = commit_epoch()

    with stage("crane", timings):
        ensure_crane(v)
    with stage("rootfs", timings):
        rootfs, made_after = build_rootfs(cache, v)
        rootfs_key = rootfs.name
    base_epoch = commit_epoch(LOCK_DIR)
    with stage("layer base", timings):
        how = f"debootstrap --variant=minbase {v['DEBIAN_SUITE']} + {' '.join(DEBIAN_PACKAGES)}"
        base_key = f"base-{LAYER_RECIPE}-{rootfs_key}-{base_epoch}"
        kept_layer_keys = {base_key}
        base = cached_layer(
            cache, base_key,
            functools.partial(write_layer, cache / "blobs", [("", rootfs)], base_epoch,
                              made_after, how),
        )  # fmt: skip
    wheels = cache / "wheels"
    with stage("wheels", timings):
        download_wheels(wheels, [BUILD_LOCK, *(image.lock for image in IMAGES.values())])
        pip_wheel(wheels, v)

    with tempfile.TemporaryDirectory(dir=cache, prefix=".work-") as work_name:
        work = Path(work_name)
        with stage("graft wheel", timings):
            wheel = build_graft_wheel(work, wheels, head_epoch)
        graft_layer: Layer | None = None
        kept_names: set[str] = set()
        results = []
        for image in selected:
            with stage(f"{image.key}: deps venv", timings):
                deps, deps_key = build_deps(cache, rootfs, rootfs_key, image, wheels=wheels, v=v)
            kept_names.add(deps.name)
            deps_epoch = commit_epoch(LOCK_DIR)
            with stage(f"{image.key}: layer deps", timings):
                layer_key = f"deps-{LAYER_RECIPE}-{image.key}-{deps_key}-{deps_epoch}"
                kept_layer_keys.add(layer_key)
                deps_layer = cached_layer(
                    cache, layer_key,
                    functools.partial(write_layer, cache / "blobs", [(VENV.lstrip("/"), deps)],
                                      deps_epoch, 0, f"pip install -r {image.key}.lock"),
                )  # fmt: skip
            if graft_layer is None:
                with stage("layer graft", timings):
                    tree = build_graft_tree(rootfs, deps, wheel, wheels=wheels, v=v, work=work)
                    graft_layer = write_layer(work / "blobs", [("", tree)], head_epoch, 0,
                                              f"pip install {wheel.name}")  # fmt: skip
            layers = [base, deps_layer, graft_layer]
            with stage(f"{image.key}: tarball", timings):
                config, manifest, _ = image_blobs(image, layers, head_epoch, revision)
                dest = out / image.filename
                digest = write_tarball(dest, image, layers, config=config, manifest=manifest,
                                       epoch=head_epoch)  # fmt: skip
            results.append((image, dest, digest, layers))

    if not args.only:
        keep = {rootfs.name, f"{rootfs.name}.built", f"{rootfs.name}.log", *kept_names}
        keep |= {Path(layer.path).name for _, _, _, layers in results for layer in layers}
        prune(cache, keep, kept_layer_keys)
    total = time.monotonic() - total_start
    print(f"\n{'image':<42} {'digest':<71} {'tarball':>9} {'unpacked':>9}")
    for image, dest, digest, layers in results:
        tar_mb = dest.stat().st_size / 1e6
        unpacked_mb = sum(layer.tar_size for layer in layers) / 1e6
        print(f"{image.ref:<42} {digest:<71} {tar_mb:>7.0f}MB {unpacked_mb:>7.0f}MB")
        print(f"  {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
    print("stages: " + ", ".join(f"{k} {t:.1f}s" for k, t in timings.items()))
    print(f"total: {total:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="build the images (the default)")
    for p in (parser, b):
        p.add_argument("--out", default=str(REPO / "build" / "images"), help="output directory")
        p.add_argument("--only", action="append", choices=sorted(IMAGES), help="only this image")
    sub.add_parser("lock", help="re-pin hack/images/*.lock from pyproject.toml")
    args = parser.parse_args(argv)
    return lock(args) if args.command == "lock" else build(args)


if __name__ == "__main__":
    raise SystemExit(main())
