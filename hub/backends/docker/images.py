"""Workspace images: building the catalog's images with Docker, and the Docker connection
the docker spawner and training backend share.

A catalog entry may name a build folder (`build:` in podbay.yaml, relative to that file)
holding a Dockerfile; `podbay images build` builds it through the docker SDK, tags it with
the entry's `image:` and passes the entry's `build_args` and the hub's jupyterhub version,
so jupyterhub-singleuser in the workspace always matches the hub. Two things are prepared
for a Dockerfile that asks:

- `FROM podbay/debian-root:bookworm`: a Debian root made with debootstrap on this host
  and imported into Docker, so the image needs no container registry at all;
- `COPY wheels/`: the Python packages as wheels, prepared on this host with its pip; the
  build then runs with no network, unless CODE_SERVER_VERSION asks for code-server,
  which comes from npm.

Every build gets `common/` (the shared install script) and the host's CA bundle, which
the script trusts when it has to reach PyPI, npm or GitHub.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...config import Image, PodbayConfig
from ...workspace import CODE_SERVER_SETTINGS, JUPYTER_CONFIG

DEBIAN_ROOT = "podbay/debian-root:bookworm"
DEBIAN_SUITE = "bookworm"
# Installed from wheels besides jupyterhub; the two proxies are used only where the
# image also gets code-server, but they are small and keep one wheel set for all.
# The proxies at versions that run code-server on a unix socket (never a TCP port).
WHEEL_PACKAGES = ["jupyterlab", "jupyter-server-proxy>=4.3", "jupyter-vscode-proxy>=0.7"]
# What a workspace image's root needs before the install script runs; openssh-server for
# SSH into workspaces through the hub (its sshd runs as the workspace's user, see
# workspace/podbay_sshd.py).
DEBIAN_PACKAGES = ["python3", "python3-venv", "ca-certificates", "tini", "procps", "openssh-server"]
# The root records what it was made with: one made with another package list is made again.
ROOT_LABEL = "podbay.debian-packages"
# Copied into every build's common/ (the install script puts them in the image): the sshd
# launcher, the idle GPU notices that login shells print, and the quiet first start's
# settings (JupyterLab's, code-server's).
SSHD_LAUNCHER = Path(__file__).resolve().parents[2] / "workspace" / "podbay_sshd.py"
WORKSPACE_FILES = [SSHD_LAUNCHER, SSHD_LAUNCHER.parent / "podbay_notices.py", JUPYTER_CONFIG, CODE_SERVER_SETTINGS]

Progress = Callable[[str], None]


class DockerUnavailable(RuntimeError):
    pass


class ImageBuildError(RuntimeError):
    pass


def require_docker_extra() -> None:
    """The docker backend's packages are an extra: say how to get them, not an ImportError."""
    for module in ("docker", "dockerspawner"):
        try:
            __import__(module)
        except ImportError:
            raise DockerUnavailable(
                f"the docker backend needs the Python package {module}, which is not installed: "
                "pip install 'podbay[docker]'") from None


def docker_client(timeout: int = 120):
    """A docker SDK client for DOCKER_HOST (or the local socket), checked with a ping."""
    require_docker_extra()
    from docker.errors import DockerException

    import docker

    try:
        client = docker.from_env(version="auto", timeout=timeout)
        client.ping()
    except DockerException as e:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(
            f"Docker is not reachable at {where} ({e}). Start the engine (systemctl start docker, "
            "or dockerd --bridge=none) or set DOCKER_HOST.") from None
    return client


def hub_version() -> str:
    import jupyterhub

    return jupyterhub.__version__


def host_ca_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt",
                      paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_dir(image: Image, config_file: Path) -> Path:
    if not image.build:
        raise ImageBuildError(f"image {image.name!r} has no build folder in {config_file} (build:)")
    folder = (config_file.parent / image.build).resolve()
    if not (folder / "Dockerfile").is_file():
        raise ImageBuildError(f"image {image.name!r}: {folder}/Dockerfile does not exist")
    return folder


def buildable(cfg: PodbayConfig, names: list[str] | None) -> list[Image]:
    if not names:
        return [i for i in cfg.images if i.build]
    images = []
    for name in names:
        image = cfg.image(name)
        if image is None:
            raise ImageBuildError(f"unknown image {name!r}; the catalog has: "
                                  + ", ".join(i.name for i in cfg.images))
        images.append(image)
    return images


def ensure_debian_root(client, cache_dir: Path, progress: Progress) -> None:
    """Import a debootstrap-made Debian root as podbay/debian-root, once."""
    from docker.errors import ImageNotFound

    wanted = ",".join(DEBIAN_PACKAGES)
    try:
        found = client.images.get(DEBIAN_ROOT)
        if (found.labels or {}).get(ROOT_LABEL) == wanted:
            return
        progress(f"{DEBIAN_ROOT} was made with other packages than {wanted}: making it again")
    except ImageNotFound:
        pass
    if not shutil.which("debootstrap"):
        raise ImageBuildError("debootstrap is needed to make the Debian root: apt-get install debootstrap")
    mirror = os.environ.get("PODBAY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {DEBIAN_SUITE} from {mirror} (about a minute)")
        run = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
             DEBIAN_SUITE, str(root), mirror],
            capture_output=True, text=True)
        if run.returncode != 0:
            raise ImageBuildError(f"debootstrap failed:\n{(run.stdout + run.stderr)[-2000:]}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        tarball = Path(tmp) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        progress(f"importing the root as {DEBIAN_ROOT}")
        repo, tag = DEBIAN_ROOT.rsplit(":", 1)
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag,
                                          changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]',
                                                   f"LABEL {ROOT_LABEL}={wanted}"])


def root_python(client) -> str:
    """The Python version of the Debian root (3.11.2 on bookworm): the wheels must fit it."""
    out = client.containers.run(DEBIAN_ROOT, ["python3", "-c", "import platform; print(platform.python_version())"],
                                network_mode="none", remove=True)
    return out.decode().strip()


def ensure_wheels(client, cache_dir: Path, progress: Progress) -> Path:
    """Wheels of jupyterhub (the hub's version) and WHEEL_PACKAGES with everything they
    need, downloaded by this host's pip for the Debian root's Python version and platform."""
    version, python = hub_version(), root_python(client)
    wanted = [f"jupyterhub=={version}", *WHEEL_PACKAGES]
    digest = hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:8]
    wheels = cache_dir / f"wheels-jupyterhub-{version}-python-{python}-{digest}"
    done = wheels / ".complete"
    if done.exists():
        return wheels
    progress(f"downloading wheels of {', '.join(wanted)} for Python {python} into {wheels}")
    wheels.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--python-version", python, "--dest", str(wheels),
         *wanted],
        capture_output=True, text=True)
    if run.returncode != 0:
        raise ImageBuildError(f"pip could not download the wheels:\n{run.stderr[-2000:]}")
    done.touch()
    return wheels


def build_image(client, image: Image, config_file: Path, cache_dir: Path, progress: Progress) -> str:
    """Build one catalog image; return its id. Raises ImageBuildError with the build's words."""
    folder = build_dir(image, config_file)
    dockerfile = (folder / "Dockerfile").read_text()
    buildargs = {**image.build_args, "JUPYTERHUB_VERSION": hub_version()}
    registry_free = bool(re.search(rf"^FROM\s+{re.escape(DEBIAN_ROOT)}\b", dockerfile, re.M))
    if registry_free:
        ensure_debian_root(client, cache_dir, progress)
    # Everything a registry-free build needs is prepared here, so it gets no network at
    # all, unless it is asked for code-server, which only the package registries have.
    offline = registry_free and not buildargs.get("CODE_SERVER_VERSION")
    with tempfile.TemporaryDirectory(prefix="podbay-build-") as tmp:
        ctx = Path(tmp) / "context"
        shutil.copytree(folder, ctx)
        common = folder.parent / "common"
        if common.is_dir() and not (ctx / "common").exists():
            shutil.copytree(common, ctx / "common")
        if (ctx / "common").is_dir():
            for path in WORKSPACE_FILES:
                if path.is_dir():
                    shutil.copytree(path, ctx / "common" / path.name, dirs_exist_ok=True)
                else:
                    shutil.copyfile(path, ctx / "common" / path.name)
        ca = host_ca_bundle()
        if ca and (ctx / "common").is_dir():
            shutil.copyfile(ca, ctx / "common" / "host-ca.crt")
        if re.search(r"^COPY\s+wheels/", dockerfile, re.M):
            shutil.copytree(ensure_wheels(client, cache_dir, progress), ctx / "wheels",
                            ignore=shutil.ignore_patterns(".complete"))
        progress(f"building {image.image} from {folder}" + (" (no network)" if offline else ""))
        image_id = None
        for chunk in client.api.build(
                path=str(ctx), tag=image.image, rm=True, forcerm=True, decode=True, pull=False,
                buildargs=buildargs,
                # No bridge network: a registry-free build gets none at all, others the host's.
                network_mode="none" if offline else "host"):
            if "error" in chunk:
                raise ImageBuildError(f"building {image.image} failed: {chunk['error'].strip()}")
            text = chunk.get("stream", "")
            if text.strip():
                progress(text.rstrip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    return image_id or client.images.get(image.image).id


def present(client, images: list[Image]) -> dict[str, bool]:
    from docker.errors import ImageNotFound

    found = {}
    for image in images:
        try:
            client.images.get(image.image)
            found[image.name] = True
        except ImageNotFound:
            found[image.name] = False
    return found
