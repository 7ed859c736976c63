"""The docker backend's part of podbay.yaml, the images folder and the catalog that names it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from docker.errors import APIError

from podbay.hub.backends.docker.settings import DockerSettings
from podbay.hub.config import ConfigError, load_config
from podbay.hub.backends.docker.images import ImageBuildError, build_dir, buildable
from podbay.hub.backends.docker.spawner import _docker_words

from tests.harness import ROOT

DEMO = ROOT / "config" / "podbay.yaml"


def test_every_demo_image_builds_from_a_folder_with_the_shared_script():
    cfg = load_config(DEMO)
    assert [i.name for i in buildable(cfg, None)] == ["pytorch", "tensorflow", "jax", "base"]
    for image in cfg.images:
        dockerfile = (build_dir(image, DEMO) / "Dockerfile").read_text()
        assert "install-workspace.sh" in dockerfile and "USER 1000:100" in dockerfile
        assert "ARG JUPYTERHUB_VERSION" in dockerfile
        # VS Code in the browser: from GitHub's release or npm, as the catalog asks.
        assert 'CODE_SERVER_SOURCE="$CODE_SERVER_SOURCE"' in dockerfile
        if image.name != "base":
            tag = re.search(r"^FROM nvcr\.io/nvidia/(\w+):(\d\d\.\d\d)-py3$", dockerfile, re.M)
            assert tag and tag.group(1) == image.name, dockerfile
            assert image.image.endswith(f":{tag.group(2)}")
    # The registry-free one starts from the debootstrap root and needs no network.
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    assert re.search(r"^FROM podbay/debian-root:bookworm$", base, re.M) and "COPY wheels/" in base


def test_unknown_or_unbuildable_images_are_refused_with_the_catalog(tmp_path):
    cfg = load_config(DEMO)
    with pytest.raises(ImageBuildError, match="unknown image 'cuda'; the catalog has: pytorch, tensorflow, jax, base"):
        buildable(cfg, ["cuda"])
    data = yaml.safe_load(DEMO.read_text())
    data["images"][0]["build"] = "nowhere"
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ImageBuildError, match=r"nowhere/Dockerfile does not exist"):
        build_dir(load_config(path).images[0], path)


def test_docker_settings_defaults_and_homes():
    d = load_config(DEMO).docker
    assert (d.name_prefix, d.gpu_driver, d.job_network, d.home_per_workspace) == ("podbay", "nvidia", "workspaces", False)
    # Workspaces and jobs are on a bridge network unless the operator opts in to the host's.
    assert (d.network.mode, d.network_name, d.job_network_name, d.network.outbound) == (
        "bridge", "podbay-net", "podbay-net", True)
    bare = DockerSettings(name_prefix="lab")
    assert (bare.network_name, bare.job_network_name) == ("lab-net", "lab-net")
    host = DockerSettings(network={"mode": "host"})
    assert (host.network_name, host.job_network_name) == ("host", "host")
    assert DockerSettings(job_network="none").job_network_name == "none"
    assert d.home_volume("alice", "dev") == "podbay-home-alice"
    per_ws = d.model_copy(update={"home_per_workspace": True})
    assert per_ws.home_volume("alice", "dev") == "podbay-home-alice--dev"
    assert per_ws.home_volume("alice", None) == "podbay-home-alice"
    # Docker-safe, and as DockerSpawner's default escaping names them, so homes keep their names.
    assert per_ws.home_volume("bob.smith", "Dev") == "podbay-home-bob-2esmith--dev"
    from dockerspawner import DockerSpawner
    for name in ("Bob.Smith", "ann-marie", "x@y.z", "jürgen"):
        assert d.home_volume(name) == f"podbay-home-{DockerSpawner._escape(name)}"


@pytest.mark.parametrize("settings, message", [
    ({"job_network": "host"}, "docker.job_network: job_network: host is gone"),
    ({"network": {"name": "bridge"}}, "one of Docker's own networks"),
    ({"network": {"mode": "host", "subnet": "10.1.0.0/24"}}, "subnet would be ignored"),
    ({"network": {"mode": "overlay"}}, "docker.network.mode"),
    ({"network": {"name": "my net"}}, "docker.network.name"),
    ({"network": {"subnet": "10.0.0.0/33"}}, "docker.network.subnet"),
    ({"network": {"subnet": "fd00::/64"}}, "docker.network.subnet"),
    ({"network": {"subnet": "10.0.0.0/30"}}, "docker.network.subnet"),
    ({"network": {"internal": True}}, "docker.network.internal"),
    ({"name_prefix": "Pod Bay"}, "docker.name_prefix"),
    ({"stop_grace": -1}, "docker.stop_grace"),
    ({"gpus": "all"}, "docker.gpus"),
])
def test_bad_docker_settings_are_errors_with_their_place(tmp_path, settings, message):
    data = yaml.safe_load(DEMO.read_text())
    data["docker"] = settings
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert any(message in str(i) for i in e.value.issues), [str(i) for i in e.value.issues]


def test_a_docker_engine_without_the_nvidia_toolkit_is_explained():
    class Response:
        status_code = 500
        reason = "Internal Server Error"

    e = APIError("500", Response(), explanation='could not select device driver "nvidia" with capabilities: [[gpu]]')
    words = _docker_words(e)
    assert "install the NVIDIA container toolkit" in words and "nvidia-ctk runtime configure" in words
    other = APIError("500", Response(), explanation="no space left on device")
    assert _docker_words(other) == "no space left on device"


def test_hub_image_and_compose_run_the_hub_and_proxy_on_the_host_network():
    # Workspaces are on podbay's bridge network (created by the hub); the hub must be in
    # the host's namespace to listen on its gateway, and the proxy's API stays on loopback.
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "networks" not in service, name
    proxy = compose["services"]["proxy"]["command"]
    assert "--api-ip=127.0.0.1" in proxy
    assert not any(arg.startswith(("--default-target", "--error-target")) for arg in proxy), \
        "the hub is not on 127.0.0.1:8001 any more: it routes / to itself when it starts"
    hub = compose["services"]["hub"]
    assert "/var/lib/podbay:/var/lib/podbay" in hub["volumes"]
    assert hub["environment"]["PODBAY_PROXY"] == "external"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert '"--backend", "docker"' in dockerfile and "configurable-http-proxy" in dockerfile
    assert Path(ROOT / "docker" / "build.sh").read_text().count("--network host") == 1


def test_build_args_are_text_and_cannot_change_the_hub_version(tmp_path):
    base = next(i for i in load_config(DEMO).images if i.name == "base")
    # The demo's CPU image gets VS Code from npm, so it needs no GitHub.
    assert base.build_args == {"CODE_SERVER_VERSION": "4.139.1"}
    data = yaml.safe_load(DEMO.read_text())
    data["images"][3]["build_args"] = {"CODE_SERVER_NODE": 24, "CODE_SERVER_SOURCE": "npm"}
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).images[3].build_args == {"CODE_SERVER_NODE": "24", "CODE_SERVER_SOURCE": "npm"}
    data["images"][0]["build_args"] = {"JUPYTERHUB_VERSION": "4.0.0"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert any("images[0].build_args" in str(i) and "hub's own version" in str(i) for i in e.value.issues), \
        [str(i) for i in e.value.issues]


def test_every_image_sets_the_vscode_socket_mode():
    # What the images set (code-server has no login; the socket is checked running in the
    # docker tests and, at build, by install-workspace.sh).
    for dockerfile in (ROOT / "images").glob("*/Dockerfile"):
        assert "JUPYTER_VSCODE_PROXY_USE_SOCKET=1" in dockerfile.read_text(), dockerfile


@pytest.mark.parametrize("ip, backend, allowed, refused", [
    ("127.0.0.1", "local", False, False),
    ("::1", "local", False, False),
    ("localhost", "local", False, False),
    ("0.0.0.0", "local", False, True),
    ("192.0.2.10", "local", False, True),
    ("0.0.0.0", "local", True, False),
    ("0.0.0.0", "docker", False, False),
])
def test_the_local_backend_listens_on_the_loopback_unless_told(ip, backend, allowed, refused):
    from podbay.hub.backends import load
    from podbay.hub.hubconfig import check_public_ip

    cfg = load_config(DEMO)
    if not refused:
        check_public_ip(ip, load(backend), allowed, cfg)
        return
    with pytest.raises(SystemExit) as e:
        check_public_ip(ip, load(backend), allowed, cfg)
    assert "not isolated" in str(e.value) and "PODBAY_ALLOW_UNISOLATED=1" in str(e.value)


@pytest.mark.parametrize("missing", ["docker", "dockerspawner"])
def test_the_docker_backend_without_its_extra_says_how_to_get_it(monkeypatch, missing):
    import sys

    from podbay.hub.backends.docker.images import DockerUnavailable, docker_client

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(DockerUnavailable, match=rf"needs the Python package {missing}, which is not installed: "
                                                r"pip install 'podbay\[docker\]'"):
        docker_client()


def test_a_local_install_needs_no_docker_packages():
    import subprocess
    import sys

    # The local path (config, hub configuration, service, the local spawner) imports neither.
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('docker', 'dockerspawner'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import podbay.hub.config, podbay.hub.hubconfig, podbay.hub.service, podbay.hub.backends.local.spawner\n"
            "import podbay.hub.backends.local.jobs, podbay.hub.cli, podbay.tui.cli\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_backend_is_chosen_in_podbay_yaml_among_the_installed_ones(tmp_path):
    from podbay.hub.backends import BackendError, chosen, load

    cfg = load_config(ROOT / "tests" / "data" / "podbay-docker.yaml")
    assert chosen(cfg) == "docker" and chosen(cfg, "local") == "local"
    assert load("docker").spawner == "podbay-docker" and load("local").spawner == "podbay-local"
    assert load("local").isolates_users is False and load("docker").isolates_users is True
    # Beside Slurm jobs that run as the person, each local workspace is its person's account:
    # isolated, with what sharing the hub's origin then leaves open turned off.
    assert not load("local").isolates(cfg) and load("slurm").isolates(cfg), "slurm's run_as is person by default"
    beside = cfg.model_copy(update={"pools": {**cfg.pools, "training": cfg.pools["training"].model_copy(
        update={"engine": "slurm", "queue": "batch"})}})
    assert load("local").isolates(beside) and load("slurm").isolates(beside)
    with pytest.raises(BackendError, match="unknown backend 'lsf': the installed ones are docker, kubernetes, local, slurm"):
        load("lsf")
    data = yaml.safe_load(DEMO.read_text())
    data["backend"] = "lsf"
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    (issue,) = [str(i) for i in e.value.issues if "backend" in str(i)]
    assert issue.startswith("backend: unknown backend 'lsf': the installed ones are docker, kubernetes, local, slurm (line ")


def test_what_every_image_build_copies_in_is_there():
    """The sshd launcher, the notices and the quiet first start's settings live in the
    workspace package, wherever the docker engine's own modules are (a move once pointed the
    build at a folder that did not exist)."""
    from podbay.hub.backends.docker.images import WORKSPACE_FILES

    assert WORKSPACE_FILES and all(f.is_file() or (f.is_dir() and any(f.rglob("*.json"))) for f in WORKSPACE_FILES)


def test_the_docker_plugin_describes_and_reconciles_from_its_own_section(monkeypatch):
    """The plugin reads its settings under docker: (cfg.docker), in what it says at start and
    in what it asks each container at reconcile (the engine stood in for: no Docker here)."""
    import sys
    import types

    from podbay.hub.backends import load
    from podbay.hub.backends.docker import plugin as docker_plugin

    cfg = load_config(DEMO, "docker")
    assert cfg.docker.network_name in load("docker").describe(cfg)
    asked = []

    class Book:
        def reconcile(self, alive, kinds):
            alive(types.SimpleNamespace(key="workspace:alice/"))
            return []

    spawner = types.ModuleType("podbay.hub.backends.docker.spawner")
    spawner.PodbayDockerSpawner = types.SimpleNamespace(
        is_alive=lambda allocation, client, network: asked.append(network) or True)
    images = types.ModuleType("podbay.hub.backends.docker.images")
    images.DockerUnavailable, images.docker_client = RuntimeError, object
    monkeypatch.setitem(sys.modules, spawner.__name__, spawner)
    monkeypatch.setitem(sys.modules, images.__name__, images)
    monkeypatch.setattr(docker_plugin, "docker_workspace_side", lambda client, settings, port: "10.0.0.1")
    side = load("docker").start_hub(cfg, types.SimpleNamespace(book=Book()), 8001)
    assert side.workspace_side == "10.0.0.1" and asked == [cfg.docker.network_name]


def test_a_volume_may_come_from_a_docker_named_volume(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    first = data["volumes"][0]
    first.pop("source")
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path, "docker")
    assert [str(i).split(" (line")[0] for i in e.value.issues] == [
        "volumes[0]: the docker backend mounts a directory: give source"]
    data["docker"] = {"named_volumes": {first["name"]: "datasets-ro", "imagenet-typo": "scratch-2"}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path, "docker")
    assert [str(i).split(" (line")[0] for i in e.value.issues] == [
        "docker.named_volumes.imagenet-typo: no volume named 'imagenet-typo' under volumes:"]
    del data["docker"]["named_volumes"]["imagenet-typo"]
    path.write_text(yaml.safe_dump(data))
    assert load_config(path, "docker").docker.named_volumes == {first["name"]: "datasets-ro"}


@pytest.mark.parametrize("named, message", [
    ("/", "must be a Docker name"),                   # a path, not a volume: the host's root
    ("../etc", "docker.named_volumes"),
    ("{username}-data", "docker.named_volumes"),        # no templating: one name for everyone
    ("podbay-home-bob", "may not name podbay's own volumes"),
])
def test_a_named_volume_is_a_name_and_never_one_of_podbays_own(tmp_path, named, message):
    data = yaml.safe_load(DEMO.read_text())
    data["docker"] = {"named_volumes": {data["volumes"][0]["name"]: named}}
    path = tmp_path / "podbay.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path, "docker")
    assert any(message in str(i) for i in e.value.issues), [str(i) for i in e.value.issues]


def test_the_docker_spawner_mounts_names_as_written():
    from podbay.hub.backends.docker.spawner import PodbayDockerSpawner

    literal = PodbayDockerSpawner().format_volume_name
    assert literal("/srv/data/{username}", None) == "/srv/data/{username}"


def test_a_persons_account_is_written_into_the_containers_password_database():
    """Beside a Slurm pool of people's jobs, a docker workspace runs as the person's uid: the
    image learns her name, home and group, and no entry of the image keeps her uid or name."""
    from pathlib import Path

    from podbay.hub.backends.docker.accounts import account_files
    from podbay.hub.identity import ClusterAccount

    passwd = ("root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
              "jovyan:x:1000:100::/home/jovyan:/bin/bash\nalice:x:7:7::/tmp:/bin/sh\n")
    group = "root:x:0:\nusers:x:100:\n"
    alice = ClusterAccount(name="alice", uid=1000, gid=3000, home=Path("/gpfs/home/alice"),
                           home_here=Path("/mnt/gpfs/home/alice"))
    files = account_files(passwd, group, alice, "/gpfs/home/alice", {3000: "vision", 3001: "users", 100: "staff"})
    rows = [line.split(":") for line in files["passwd"].splitlines()]
    assert [r[0] for r in rows] == ["root", "sshd", "nobody", "alice"]
    assert rows[-1] == ["alice", "x", "1000", "3000", "alice", "/gpfs/home/alice", "/bin/bash"]
    # Her groups by the cluster's names; a name the image uses already gets its gid added.
    assert files["group"].splitlines() == ["root:x:0:", "users:x:100:", "vision:x:3000:", "users-3001:x:3001:alice"]
    # An image with nobody of its own (NGC's): root's shell, not nologin.
    ngc = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    assert account_files(ngc, "", alice, "/h")["passwd"].splitlines()[-1].endswith(":/h:/bin/bash")
    # Her name leaves image groups that are not hers; a field with a \r stays one line.
    mixed = account_files("root:x:0:0:r\roo t:/root:/bin/bash\n", "sudo:x:27:alice,bob\n", alice, "/h")
    assert mixed["group"].splitlines()[0] == "sudo:x:27:bob" and mixed["passwd"].count("\n") == 2
    # A group the image has already is kept as it is.
    bob = ClusterAccount(name="bob", uid=2001, gid=100, home=Path("/h/bob"), home_here=Path("/h/bob"))
    assert account_files(passwd, group, bob, "/h/bob")["group"] == group
