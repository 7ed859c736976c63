"""The docker backend's part of podbay.yaml, the images folder and the catalog that names it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from docker.errors import APIError

from podbay.hub.config import ConfigError, load_config
from podbay.hub.images import ImageBuildError, build_dir, buildable
from podbay.hub.spawners.docker import _docker_words

from tests.conftest import ROOT

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
    assert (d.name_prefix, d.gpu_driver, d.job_network, d.home_per_workspace) == ("podbay", "nvidia", "host", False)
    assert d.home_volume("alice", "dev") == "podbay-home-alice"
    per_ws = d.model_copy(update={"home_per_workspace": True})
    assert per_ws.home_volume("alice", "dev") == "podbay-home-alice--dev"
    assert per_ws.home_volume("alice", None) == "podbay-home-alice"


@pytest.mark.parametrize("settings, message", [
    ({"job_network": "bridge"}, "docker.job_network"),
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


def test_hub_image_and_compose_use_the_host_network_only():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "networks" not in service, name
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
