"""Builds the harness's container images without a registry, and skips builds already done.

Two kinds of image:
- the *base* image, a Debian bookworm root filesystem made with ``debootstrap`` from the host's
  apt mirror and turned into an image with ``docker import`` (nothing is pulled);
- *recipe* images (``docker/<name>/Dockerfile``), built on a ``BASE_IMAGE`` build argument
  (our base by default; anyone with a registry may pass ``python:3.11-slim``). Python packages
  go in as wheels built on the host, installed with ``pip --no-index``: the base's Python is
  3.11 like the host's, so host-built wheels install.

Every image carries a content-hash label; a build whose inputs hash to the label of the image
already present is skipped. ``python -m harness.images build [base|refserver|all]`` is the
command line (`build hstream-standin` builds the stand-in for the real HStreamDB image from
the refserver image, which it builds first, and the base below it; `build refserver-io` builds
the node image of the IO suite: the refserver recipe on the connectors image, which holds the
fixture connectors installed from wheels the host builds, harness.io.connector_image).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from harness import HarnessError
from harness.debian import ToolMissing, ensure_tools

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
BUILD_DIR = DOCKER_DIR / ".build"
WHEELS_DIR = BUILD_DIR / "wheels"

LABEL_PREFIX = "org.hstream-conformance"
HASH_LABEL = f"{LABEL_PREFIX}.content-hash"
KIND_LABEL = f"{LABEL_PREFIX}.image"

BASE_IMAGE = "hstream-conformance/base:bookworm"
REFSERVER_IMAGE = "hstream-conformance/refserver:latest"
# The stand-in for hstreamdb/hstream (docker/hstream-standin): its tag names the HStreamDB
# version whose interface it answers to, which the hstream target reads from the tag.
STANDIN_IMAGE = "hstream-conformance/hstream-standin:v0.20.3"
# The fixture connectors installed on the base (docker/connectors), and the reference server's
# recipe built on that image: the node image of the IO suite on the docker backend.
CONNECTORS_IMAGE = "hstream-conformance/connectors:latest"
REFSERVER_IO_IMAGE = "hstream-conformance/refserver-io:latest"

SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "iproute2",
    "iptables",
    "procps",
    "ca-certificates",
    # the ssh runtime's test hosts (`hstream-conformance hosts up`) run sshd from this base
    "openssh-server",
    # the clock layer (harness.clocklayer) preloads it into nodes started with clock faults
    "libfaketime",
)
# Bump when the way the base is made changes in a way its inputs above don't show.
BASE_RECIPE_VERSION = "1"

# hstreamdb 0.5.0 ships only an sdist whose build breaks with setuptools >= 81.
PIP_BUILD_CONSTRAINTS = "setuptools<81\n"

# What of the project goes into its wheel, hence into the images: hashing these (and not the
# wheel file, whose zip timestamps change on every build) keeps the hash reproducible.
PROJECT_SOURCES = ("pyproject.toml", "setup.py", "harness", "refserver")
SOURCE_SUFFIXES = {".py", ".proto", ".json", ".html", ".css", ".js", ".toml"}

PROJECT_WHEEL_PREFIX = "hstream_conformance-"

Progress = Callable[[str], None]


def print_progress(line: str) -> None:
    print(f"[images] {line}", file=sys.stderr, flush=True)


class ImageBuildError(HarnessError):
    """A build step failed; the message says which step and how to fix it."""


@dataclass(frozen=True)
class BuildResult:
    image: str
    content_hash: str
    skipped: bool
    image_id: str


@dataclass(frozen=True)
class Recipe:
    """An image built from ``docker/<name>/Dockerfile`` with the project's wheels."""

    name: str
    tag: str
    build_args: dict[str, str] = field(default_factory=dict)
    # Another recipe whose image this one builds FROM (its tag is the BASE_IMAGE), built first.
    on: str | None = None
    # In "all": the images every run needs. An opt-in image (the stand-in, which apt-gets a
    # JRE) is built by name only, or by the tests that use it.
    in_all: bool = True
    # The folder under docker/ whose Dockerfile this is, when not `name` (one recipe built on
    # another base).
    directory: str | None = None
    # Whether the project's wheels go into the context (and its sources into the hash): an
    # image without them is not rebuilt for a change of the project's sources.
    project_wheels: bool = True
    # More of the build context: context name -> file on the host, made (or found current)
    # when the recipe is built; the files' content is part of the image's hash.
    context: Callable[[Progress], dict[str, Path]] | None = None

    @property
    def dockerfile(self) -> Path:
        return DOCKER_DIR / (self.directory or self.name) / "Dockerfile"

    @property
    def files(self) -> list[Path]:
        """The other files of docker/<name>/ (scripts the Dockerfile COPYs): in the context."""
        return sorted(
            p
            for p in self.dockerfile.parent.iterdir()
            if p.is_file() and p.name != "Dockerfile" and not p.name.startswith(".")
        )


RECIPES: dict[str, Recipe] = {
    "refserver": Recipe(name="refserver", tag=REFSERVER_IMAGE),
    "hstream-standin": Recipe(
        name="hstream-standin", tag=STANDIN_IMAGE, on="refserver", in_all=False
    ),
    "connectors": Recipe(
        name="connectors", tag=CONNECTORS_IMAGE, in_all=False, project_wheels=False,
        context=lambda progress: _connector_context(progress),
    ),
    "refserver-io": Recipe(
        name="refserver-io", tag=REFSERVER_IO_IMAGE, on="connectors", in_all=False,
        directory="refserver",
    ),
}


def _connector_context(progress: Progress) -> dict[str, Path]:
    # Imported on use: building the connectors' wheels is the IO harness's business.
    from harness.io.connector_image import context_files

    return context_files(progress)


# ---------------------------------------------------------------- the engine


class DockerUnavailable(HarnessError):
    """No Docker engine answers; the message says how to get one."""


def connect(timeout: int = 120) -> docker.DockerClient:
    """A client of the local Docker engine, or one clear error saying how to fix it."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    socket_path = host.removeprefix("unix://") if host.startswith("unix://") else None
    if socket_path is not None and not Path(socket_path).exists():
        raise DockerUnavailable(
            f"no Docker engine: socket {socket_path} does not exist; start the daemon "
            "(`sudo systemctl start docker` or `sudo dockerd &`) or set DOCKER_HOST"
        )
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            f"no Docker engine answers at {host} ({exc.__class__.__name__}: {exc}); "
            "start the daemon, check you may use its socket (group `docker`), or set DOCKER_HOST"
        ) from None
    return client


# ---------------------------------------------------------------- content hashing


def _hash_files(digest: Any, root: Path, paths: Iterator[Path]) -> None:
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")


def _project_source_files() -> Iterator[Path]:
    for name in PROJECT_SOURCES:
        path = REPO_ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for item in path.rglob("*"):
                if (
                    item.is_file()
                    and item.suffix in SOURCE_SUFFIXES
                    and "__pycache__" not in item.parts
                    # generated stubs follow from the .proto files, already hashed
                    and not re.search(r"_pb2(_grpc)?\.py$", item.name)
                ):
                    yield item


def project_source_hash() -> str:
    digest = hashlib.sha256()
    _hash_files(digest, REPO_ROOT, _project_source_files())
    return digest.hexdigest()


def base_content_hash() -> str:
    recipe = f"{BASE_RECIPE_VERSION}|{SUITE}|minbase|{','.join(sorted(BASE_PACKAGES))}"
    return hashlib.sha256(recipe.encode()).hexdigest()


def recipe_content_hash(
    recipe: Recipe, build_args: dict[str, str], base_id: str, wheels: list[Path],
    extra: dict[str, Path] | None = None,
) -> str:
    """Dockerfile (and the files beside it) + build args + base image id(s) + wheels + project
    sources (for a recipe with the project's wheels) + the recipe's own context files."""
    digest = hashlib.sha256()
    digest.update(recipe.dockerfile.read_bytes())
    _hash_files(digest, recipe.dockerfile.parent, iter(recipe.files))
    for key, value in sorted(build_args.items()):
        digest.update(f"{key}={value}\0".encode())
    digest.update(base_id.encode())
    for wheel in sorted(wheels):
        digest.update(wheel.name.encode())
        if not wheel.name.startswith(PROJECT_WHEEL_PREFIX):
            digest.update(hashlib.sha256(wheel.read_bytes()).digest())
    if recipe.project_wheels:
        digest.update(project_source_hash().encode())
    for name, path in sorted((extra or {}).items()):
        digest.update(f"{name}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- docker helpers


def image_label(client: docker.DockerClient, image: str, label: str) -> str | None:
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        return None
    labels = (found.attrs.get("Config") or {}).get("Labels") or {}
    return labels.get(label)


def image_id(client: docker.DockerClient, image: str) -> str:
    return str(client.images.get(image).id)


def build_hint(image: str) -> str:
    """How to get `image` onto this machine, for error messages."""
    if image == BASE_IMAGE:
        return "build it with `python -m harness.images build base`"
    for name, recipe in RECIPES.items():
        if recipe.tag == image:
            return f"build it with `python -m harness.images build {name}`"
    return (
        "load it (`docker load -i <file>`) or build it; the images this harness builds "
        f"({BASE_IMAGE}, {', '.join(r.tag for r in RECIPES.values())}) come from "
        "`python -m harness.images build all`"
    )


def our_image_name(image: str) -> str | None:
    """The build name ("base" or a recipe) of an image this harness builds, else None."""
    if image == BASE_IMAGE:
        return "base"
    return next((name for name, recipe in RECIPES.items() if recipe.tag == image), None)


# Images this process has already made sure of: a suite run asks once, not per cluster.
_ENSURED: set[str] = set()


def ensure_image(
    image: str, *, client: docker.DockerClient | None = None, progress: Progress = print_progress
) -> bool:
    """Make one of our images present and current on first use: build it, or find it up to date
    (content hashes), once per process. Builds take a machine-wide lock, so parallel workers
    wait for the first one and then find the image built. Returns False for an image that is
    not ours (the caller decides how to report it missing)."""
    name = our_image_name(image)
    if name is None:
        return False
    if image in _ENSURED:
        return True
    build([name], client=client or connect(), progress=progress)
    _ENSURED.add(image)
    return True


@contextlib.contextmanager
def _build_lock(progress: Progress, image: str) -> Iterator[None]:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / "build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{image}: another process is building images; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wheels_snapshot(progress: Progress = print_progress) -> list[Path]:
    """The project's wheels, built (or found current) under the machine-wide build lock and
    copied to a folder of this process's own: another worker rebuilding the shared wheel
    folder cannot pull a file from under an upload. Removed when the process exits."""
    import atexit

    with _build_lock(progress, "wheels"):
        built = build_wheels(progress=progress)
        copy_dir = Path(tempfile.mkdtemp(prefix="hsc-wheels-"))
        atexit.register(shutil.rmtree, copy_dir, True)
        return [Path(shutil.copy2(wheel, copy_dir / wheel.name)) for wheel in built]


def require_image(client: docker.DockerClient, image: str) -> None:
    """Fail fast, naming the image and the command that builds it."""
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(
            f"docker image {image!r} is not present and cannot be pulled here; " + build_hint(image)
        ) from None


# ---------------------------------------------------------------- base image


def host_apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the host's apt uses for the main archive (not -security).

    Asked from apt itself (`apt-get indextargets`), which knows every source format; the
    sources files are read directly only where apt-get is missing.
    """
    if shutil.which("apt-get"):
        listed = subprocess.run(
            ["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE) $(TARGET_OF)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        for line in sorted(set(listed.stdout.splitlines())):
            parts = line.split()
            if len(parts) == 3 and parts[1] == SUITE and parts[2] == "deb":
                return parts[0].rstrip("/")
    candidates: list[tuple[str, list[str]]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.lstrip().startswith("#"):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        candidates.append((uri, fields.get("suites", "").split()))
        else:
            for line in text.splitlines():
                match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match:
                    candidates.append((match.group(1), [match.group(2)]))
    for uri, suites in candidates:
        if SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    raise ImageBuildError(
        f"no apt source for Debian {SUITE} found under {apt_dir}; "
        "pass --mirror http://<debian mirror>/debian"
    )


def _install_debootstrap(progress: Progress) -> None:
    """As root on Debian the project installs the one tool the base image needs; anyone else
    is told the command."""
    try:
        ensure_tools({"debootstrap": "debootstrap"}, why="building the base image",
                     progress=progress)
    except ToolMissing as exc:
        raise ImageBuildError(
            f"{exc} (or build recipes on a registry image: --base-image python:3.11-slim)"
        ) from None


def build_base(
    client: docker.DockerClient,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: Progress = print_progress,
) -> BuildResult:
    content_hash = base_content_hash()
    if not force and image_label(client, BASE_IMAGE, HASH_LABEL) == content_hash:
        progress(f"{BASE_IMAGE}: up to date (content hash {content_hash[:12]}), skipped")
        return BuildResult(BASE_IMAGE, content_hash, True, image_id(client, BASE_IMAGE))
    if shutil.which("debootstrap") is None:
        _install_debootstrap(progress)
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the base image needs root (debootstrap creates device nodes and "
            "chroots): run `sudo python -m harness.images build base`"
        )
    mirror = mirror or host_apt_mirror()
    progress(f"{BASE_IMAGE}: debootstrap {SUITE} from {mirror} (takes about a minute)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=BUILD_DIR) as rootfs:
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            rootfs,
            mirror,
        ]
        try:
            _run_logged(cmd, progress, step="debootstrap")
        finally:
            # A failed debootstrap leaves /proc and /sys mounted inside the tree; removing the
            # tree with them mounted would reach into the host's.
            _unmount_below(Path(rootfs))
        # apt's caches are a third of the tree and useless in an image built offline
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (Path(rootfs) / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        progress(f"{BASE_IMAGE}: docker import")
        tar = subprocess.Popen(
            ["tar", "-C", rootfs, "--one-file-system", "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        repository, _, tag = BASE_IMAGE.rpartition(":")
        try:
            client.api.import_image_from_stream(
                tar.stdout,
                repository=repository,
                tag=tag,
                changes=[
                    f"LABEL {HASH_LABEL}={content_hash}",
                    f"LABEL {KIND_LABEL}=base",
                    "ENV LANG=C.UTF-8",
                    'CMD ["/bin/bash"]',
                ],
            )
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError(f"tar of the root filesystem failed (exit {tar.returncode})")
    if image_label(client, BASE_IMAGE, HASH_LABEL) != content_hash:
        raise ImageBuildError(f"docker import did not produce {BASE_IMAGE} with its hash label")
    progress(f"{BASE_IMAGE}: built (content hash {content_hash[:12]})")
    return BuildResult(BASE_IMAGE, content_hash, False, image_id(client, BASE_IMAGE))


def _unmount_below(root: Path) -> None:
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(root.resolve()) + "/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def _run_logged(cmd: list[str], progress: Progress, step: str) -> None:
    """Runs a build command, printing a line of progress every 25 lines of its output."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for count, line in enumerate(proc.stdout, 1):
        tail = (tail + [line.rstrip()])[-20:]
        if count % 25 == 0:
            progress(f"{step}: {line.rstrip()}")
    if proc.wait() != 0:
        raise ImageBuildError(
            f"{step} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail)
        )


# ---------------------------------------------------------------- wheels


DEPENDENCY_INPUTS = ("pyproject.toml", "setup.py")


def dependency_hash() -> str:
    """What decides the third-party wheels: the declared dependencies and build constraint."""
    digest = hashlib.sha256(PIP_BUILD_CONSTRAINTS.encode())
    _hash_files(digest, REPO_ROOT, (REPO_ROOT / name for name in DEPENDENCY_INPUTS))
    return digest.hexdigest()


def _pip_wheel(extra: list[str], progress: Progress, what: str) -> None:
    constraints = BUILD_DIR / "pip-build-constraints.txt"
    constraints.write_text(PIP_BUILD_CONSTRAINTS)
    env = {**os.environ, "PIP_CONSTRAINT": str(constraints)}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        *extra,
        str(REPO_ROOT),
        "-w",
        str(WHEELS_DIR),
    ]
    progress(f"wheels: {what} -> {WHEELS_DIR.relative_to(REPO_ROOT)}")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(
            "pip wheel failed; the images need the project and its dependencies as wheels "
            f"(check the package index is reachable):\n{result.stderr[-3000:]}"
        )


def build_wheels(*, progress: Progress = print_progress) -> list[Path]:
    """Wheels of the project and every dependency, rebuilt only when their inputs change.

    The dependencies' wheels are rebuilt only when pyproject.toml or setup.py change; a
    change to the project's sources rebuilds only the project's own wheel (seconds).
    """
    source_stamp = WHEELS_DIR / ".source-hash"
    deps_stamp = WHEELS_DIR / ".dependency-hash"
    source_hash, deps_hash = project_source_hash(), dependency_hash()

    def stamped(stamp: Path, value: str) -> bool:
        return stamp.is_file() and stamp.read_text().strip() == value

    wheels = sorted(WHEELS_DIR.glob("*.whl")) if WHEELS_DIR.is_dir() else []
    has_project = any(w.name.startswith(PROJECT_WHEEL_PREFIX) for w in wheels)
    if stamped(deps_stamp, deps_hash) and len(wheels) > 1:
        if stamped(source_stamp, source_hash) and has_project:
            progress(f"wheels: up to date ({len(wheels)} in {WHEELS_DIR.relative_to(REPO_ROOT)})")
            return wheels
        for wheel in wheels:
            if wheel.name.startswith(PROJECT_WHEEL_PREFIX):
                wheel.unlink()
        _pip_wheel(["--no-deps"], progress, "pip wheel --no-deps . (sources changed)")
    else:
        if WHEELS_DIR.exists():
            shutil.rmtree(WHEELS_DIR)
        WHEELS_DIR.mkdir(parents=True)
        _pip_wheel([], progress, "pip wheel . (project and dependencies)")
        deps_stamp.write_text(deps_hash + "\n")
    source_stamp.write_text(source_hash + "\n")
    wheels = sorted(WHEELS_DIR.glob("*.whl"))
    progress(f"wheels: {len(wheels)} ready")
    return wheels


# ---------------------------------------------------------------- recipe images


def build_recipe(
    client: docker.DockerClient,
    recipe: Recipe,
    *,
    base_image: str = BASE_IMAGE,
    debian_image: str | None = None,
    force: bool = False,
    progress: Progress = print_progress,
) -> BuildResult:
    """`base_image` is what the recipe builds FROM (another recipe's image for a recipe
    `on` one); `debian_image`, given to such a recipe, is the plain base below that chain, so
    its Dockerfile can install its Debian packages there in a layer that a change of the
    other recipe's image does not invalidate."""
    if not recipe.dockerfile.is_file():
        raise ImageBuildError(f"no Dockerfile for image {recipe.name!r} at {recipe.dockerfile}")
    require_image(client, base_image)
    build_args = {"BASE_IMAGE": base_image, **recipe.build_args}
    base_ids = image_id(client, base_image)
    if debian_image is not None:
        require_image(client, debian_image)
        build_args["DEBIAN_IMAGE"] = debian_image
        base_ids += image_id(client, debian_image)
    wheels = build_wheels(progress=progress) if recipe.project_wheels else []
    extra = recipe.context(progress) if recipe.context is not None else {}
    content_hash = recipe_content_hash(recipe, build_args, base_ids, wheels, extra)
    if not force and image_label(client, recipe.tag, HASH_LABEL) == content_hash:
        progress(f"{recipe.tag}: up to date (content hash {content_hash[:12]}), skipped")
        return BuildResult(recipe.tag, content_hash, True, image_id(client, recipe.tag))

    previous_id = (
        image_id(client, recipe.tag) if image_label(client, recipe.tag, KIND_LABEL) else None
    )
    # The context holds only the Dockerfile and the wheels: small, and nothing stray gets in.
    context = BUILD_DIR / f"context-{recipe.name}"
    if context.exists():
        shutil.rmtree(context)
    # Dependencies and the project's own wheel in separate folders, so the Dockerfile can
    # install them in separate layers and a source change reuses the dependency layer.
    for part in ("deps", "project"):
        (context / "wheels" / part).mkdir(parents=True)
    shutil.copy2(recipe.dockerfile, context / "Dockerfile")
    for path in recipe.files:
        shutil.copy2(path, context / path.name)
    for wheel in wheels:
        part = "project" if wheel.name.startswith(PROJECT_WHEEL_PREFIX) else "deps"
        os.link(wheel, context / "wheels" / part / wheel.name)
    for name, path in extra.items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, context / name)
    progress(f"{recipe.tag}: docker build on {base_image}")
    tail: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(context),
            tag=recipe.tag,
            buildargs=build_args,
            labels={HASH_LABEL: content_hash, KIND_LABEL: recipe.name},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                raise ImageBuildError(
                    f"docker build of {recipe.tag} failed: {chunk['error'].strip()}\n"
                    + "\n".join(tail)
                )
            line = str(chunk.get("stream", "")).rstrip()
            if line:
                tail = (tail + [line])[-20:]
                if line.startswith("Step "):
                    progress(f"{recipe.tag}: {line}")
    finally:
        shutil.rmtree(context, ignore_errors=True)
    built = image_id(client, recipe.tag)
    if previous_id and previous_id != built:
        # The superseded build is now untagged; drop it unless a container still uses it.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(previous_id)
    progress(f"{recipe.tag}: built (content hash {content_hash[:12]})")
    return BuildResult(recipe.tag, content_hash, False, built)


def build(
    names: list[str],
    *,
    client: docker.DockerClient | None = None,
    base_image: str = BASE_IMAGE,
    mirror: str | None = None,
    force: bool = False,
    progress: Progress = print_progress,
) -> list[BuildResult]:
    """Builds the named images ("base", a recipe name, or "all": the base and every recipe
    that is in_all), in dependency order, holding the machine-wide build lock: two builders
    of one image (parallel workers, a test and the command line) would race on its tag and
    on the shared wheel folder. Bad names and a missing engine are reported before the lock
    is taken: they need no waiting on another builder to be known."""
    unknown = [n for n in names if n not in ("all", "base", *RECIPES)]
    if unknown:
        raise ImageBuildError(
            f"unknown image {', '.join(map(repr, unknown))}; known: all, base, {', '.join(RECIPES)}"
        )
    client = client or connect()
    with _build_lock(progress, ", ".join(names)):
        return _build_unlocked(names, client=client, base_image=base_image, mirror=mirror,
                               force=force, progress=progress)


def _build_unlocked(
    names: list[str],
    *,
    client: docker.DockerClient,
    base_image: str,
    mirror: str | None,
    force: bool,
    progress: Progress,
) -> list[BuildResult]:
    wanted = set(names)
    results = []
    done: set[str] = set()

    def build_named(name: str, forced: bool) -> None:
        recipe = RECIPES[name]
        if name in done:
            return
        if recipe.on is not None:
            build_named(recipe.on, False)
        base = RECIPES[recipe.on].tag if recipe.on is not None else base_image
        results.append(
            build_recipe(client, recipe, base_image=base, force=forced, progress=progress,
                         debian_image=base_image if recipe.on is not None else None)
        )
        done.add(name)

    if "all" in wanted or "base" in wanted:
        if base_image == BASE_IMAGE:
            results.append(build_base(client, mirror=mirror, force=force, progress=progress))
    for name, recipe in RECIPES.items():
        if ("all" in wanted and recipe.in_all) or name in wanted:
            if base_image == BASE_IMAGE and "base" not in wanted and "all" not in wanted:
                results.append(build_base(client, mirror=mirror, progress=progress))
            build_named(name, force)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build images (skipped when their content is unchanged)")
    cmd.add_argument(
        "images", nargs="*", default=["all"], help=f"base, {', '.join(RECIPES)}, or all"
    )
    cmd.add_argument("--force", action="store_true", help="rebuild even when up to date")
    cmd.add_argument("--mirror", help="Debian mirror for the base (default: the host's apt's)")
    cmd.add_argument(
        "--base-image",
        default=BASE_IMAGE,
        help="image the recipes build FROM (e.g. python:3.11-slim where a registry is reachable)",
    )
    args = parser.parse_args(argv)
    try:
        for result in build(
            args.images, base_image=args.base_image, mirror=args.mirror, force=args.force
        ):
            state = "skipped (up to date)" if result.skipped else "built"
            print(f"{result.image}\t{result.image_id[:19]}\t{state}")
    except (ImageBuildError, DockerUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
