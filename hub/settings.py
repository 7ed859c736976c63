"""podbay's settings for the hub (`c.Podbay.<name>`), each with its environment variable
(what `podbay up` sets) and its default: the one place those defaults live. The embedded
set-up, the cluster set-up (through the spawner mixin's own traits, which fall back to
these) and `podbay up`'s options all read them here."""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Bool, Integer, Unicode, default, validate
from traitlets.config import Configurable

from .quota import database_url


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


class Podbay(Configurable):
    """podbay's own settings for the hub, as `c.Podbay.<name>` in a jupyterhub_config.py
    before `configure(c)`; each falls back to its environment variable (what `podbay up`
    sets), then to the embedded default."""

    config_file = Unicode(config=True, help="podbay.yaml (env PODBAY_CONFIG; else ./config/podbay.yaml, else "
                                            "./podbay.yaml; never the shipped demo).")
    data_dir = Unicode(config=True, help="Ledger, homes, logs, the hub's files (env PODBAY_DATA_DIR; default .podbay).")
    ip = Unicode(config=True, help="The public address (env PODBAY_IP; default 127.0.0.1).")
    port = Integer(config=True, help="The public port (env PODBAY_PORT; default 8000). The hub uses +1, "
                                     "the proxy's API +2 (127.0.0.1 only), podbay's service +3.")
    ssl_cert = Unicode(config=True, help="TLS certificate (PEM) for the public port (env PODBAY_SSL_CERT).")
    ssl_key = Unicode(config=True, help="Its private key (env PODBAY_SSL_KEY).")
    backend = Unicode(config=True, help="Overrides podbay.yaml's backend: (env PODBAY_BACKEND).")
    db_url = Unicode(config=True, help="The quota book's database (env PODBAY_DB_URL; default SQLite in data_dir). "
                                       "postgresql://… means psycopg 3.")
    hub_db_url = Unicode(config=True, help="The hub's own database (env PODBAY_HUB_DB_URL; default SQLite in data_dir).")
    keep_workspaces = Bool(config=True, help="Leave workspaces running when the hub stops (env PODBAY_KEEP_WORKSPACES=1).")
    allow_unisolated = Bool(config=True, help="Let a backend that does not isolate users (local) listen beyond "
                                              "the loopback (env PODBAY_ALLOW_UNISOLATED=1).")
    http_timeout = Integer(60, config=True, help="Seconds a started workspace has to answer.")
    start_timeout = Integer(90, config=True, help="Seconds a workspace has to start.")

    @default("config_file")
    def _config_file(self):
        # Never the shipped demo here: a production hub with no file named must not start
        # on the demo's made-up GPUs (`podbay up` names the demo itself when asked for none).
        named = _env("PODBAY_CONFIG") or next(
            (p for p in ("config/podbay.yaml", "podbay.yaml") if Path(p).is_file()), None)
        if not named:
            raise SystemExit("podbay: no podbay.yaml named: set c.Podbay.config_file (or PODBAY_CONFIG)")
        return os.path.abspath(named)

    @default("data_dir")
    def _data_dir(self):
        return str(Path(_env("PODBAY_DATA_DIR", ".podbay")).absolute())

    @default("ip")
    def _ip(self):
        return _env("PODBAY_IP", "127.0.0.1")

    @default("port")
    def _port(self):
        return int(_env("PODBAY_PORT", "8000"))

    @default("ssl_cert")
    def _ssl_cert(self):
        return _env("PODBAY_SSL_CERT", "")

    @default("ssl_key")
    def _ssl_key(self):
        return _env("PODBAY_SSL_KEY", "")

    @default("backend")
    def _backend(self):
        return _env("PODBAY_BACKEND", "")

    @default("db_url")
    def _db_url(self):
        return database_url(_env("PODBAY_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'ledger.sqlite'}")

    @default("hub_db_url")
    def _hub_db_url(self):
        return database_url(_env("PODBAY_HUB_DB_URL") or f"sqlite:///{Path(self.data_dir) / 'jupyterhub.sqlite'}")

    @default("keep_workspaces")
    def _keep(self):
        return _env("PODBAY_KEEP_WORKSPACES", "0") == "1"

    @default("allow_unisolated")
    def _allow(self):
        return _env("PODBAY_ALLOW_UNISOLATED", "0") == "1"

    @validate("db_url", "hub_db_url")
    def _driver(self, proposal):
        # Given or defaulted, the same URL: postgresql:// means psycopg 3 either way.
        return database_url(proposal.value)

