"""podbay's hub settings have one set of defaults (hub/settings.py): the spawner mixin (what
the cluster set-up reads) and `podbay up` fall back to them, so the three cannot disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from traitlets.config import Config

from podbay.hub.settings import Podbay
from podbay.hub.spawner import PodbaySpawnerMixin


def test_the_spawners_settings_fall_back_to_podbays(monkeypatch, tmp_path):
    for name in ("PODBAY_CONFIG", "PODBAY_DATA_DIR", "PODBAY_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "podbay.yaml").write_text("{}\n")
    # Nothing set: the same defaults, whoever reads them.
    mixin, podbay = PodbaySpawnerMixin(), Podbay()
    assert (mixin.config_file, mixin.data_dir, mixin.db_url) == (podbay.config_file, podbay.data_dir, podbay.db_url)
    assert Path(mixin.data_dir) == tmp_path / ".podbay"
    # The environment, as `podbay up` passes it.
    monkeypatch.setenv("PODBAY_DATA_DIR", str(tmp_path / "state"))
    assert PodbaySpawnerMixin().data_dir == str(tmp_path / "state")
    assert PodbaySpawnerMixin().db_url.endswith(f"{tmp_path}/state/ledger.sqlite")
    # c.Podbay in a jupyterhub_config.py reaches the spawner too.
    c = Config()
    c.Podbay.data_dir = "/srv/podbay"
    assert PodbaySpawnerMixin(config=c).data_dir == "/srv/podbay"
    # The spawner's own setting wins, and the quota book follows it into that folder.
    c.PodbaySpawnerMixin.data_dir = "/srv/jupyterhub/podbay"
    assert PodbaySpawnerMixin(config=c).db_url.endswith("/srv/jupyterhub/podbay/ledger.sqlite")
    # …unless the book is named.
    c.Podbay.db_url = "postgresql://podbay@db/podbay"
    assert PodbaySpawnerMixin(config=c).db_url.startswith("postgresql+psycopg://podbay@db/podbay")


def test_podbay_up_takes_its_defaults_from_the_same_place(monkeypatch):
    from podbay.tui.cli import build_parser

    monkeypatch.setenv("PODBAY_PORT", "9100")
    args = build_parser().parse_args(["up"])
    assert args.port is None and args.ip is None and args.data_dir is None  # filled from Podbay() by cmd_up
    assert Podbay().port == 9100


def test_a_postgresql_url_means_psycopg_3_wherever_it_is_set():
    c = Config()
    c.PodbaySpawnerMixin.db_url = "postgresql://podbay@db/podbay"
    c.Podbay.hub_db_url = "postgres://hub@db/hub"
    assert PodbaySpawnerMixin(config=c).db_url == "postgresql+psycopg://podbay@db/podbay"
    assert Podbay(config=c).hub_db_url == "postgresql+psycopg://hub@db/hub"


@pytest.mark.parametrize("bind, base, url", [
    (None, None, "http://127.0.0.1:8081/hub/api"),                 # the chart's hub_bind_url http://:8081
    ("http://:8081", "/jhub/", "http://127.0.0.1:8081/jhub/hub/api"),
    ("http://0.0.0.0:9000", "/", "http://127.0.0.1:9000/hub/api"),
])
def test_the_service_on_a_cluster_reaches_the_hub_in_its_own_pod(bind, base, url):
    from podbay.hub.hubconfig.start import own_hub_api_url

    c = Config()
    if bind:
        c.JupyterHub.hub_bind_url = bind
    if base:
        c.JupyterHub.base_url = base
    c.JupyterHub.hub_connect_url = "http://hub:8081"  # what JupyterHub would give the service
    assert own_hub_api_url(c) == url
