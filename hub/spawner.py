"""What podbay adds to any JupyterHub spawner.

`PodbaySpawnerMixin` comes first in the bases and calls `super()` everywhere, so the same
class combines with LocalProcessSpawner, DockerSpawner and KubeSpawner. It brings the
options form, strict user_options validation, quota and volume checks, device claims in
the quota book, and the workspace's GPU environment. A backend subclass adds only what is
specific to where the workspace runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache

import jinja2
from jupyterhub.spawner import SpawnException
from jupyterhub.utils import maybe_future
from traitlets import Float, Integer, Unicode, default, validate
from traitlets.config import Configurable

from .environment import workspace_env
from .quota import Allocation, ClaimRefused, QuotaExceeded, database_url, fmt_units
from .portal import OptionsRefused, Portal, Request
from .secrets import SecretsUnavailable
from .settings import Podbay

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("podbay.hub", "templates"),
    autoescape=True,
)


# A claim with nothing recorded yet (no pid, no container) may belong to a spawn under way,
# in this hub or in `jupyterhub token` and other hub commands reconciling at start: only one
# older than any start could be is known to be dead.
SPAWN_GRACE = 300


def spawn_may_be_under_way(allocation: Allocation) -> bool:
    return time.time() - allocation.created < SPAWN_GRACE


@lru_cache(maxsize=None)
def shared_portal(config_file: str, db_url: str, data_dir: str, backend: str | None = None) -> Portal:
    """One Portal per hub process: spawners share its config, quota book and capacity."""
    return Portal.open(config_file, db_url, data_dir, backend)


class PodbaySpawnerMixin(Configurable):
    config_file = Unicode(
        config=True,
        help="""Path of podbay.yaml (images, GPU profiles, inventory, volumes, teams).

        c.PodbaySpawnerMixin.config_file = "/etc/podbay/podbay.yaml"
        """,
    )

    # Each unset one falls back to c.Podbay's (hub/settings.py: the one place of defaults).
    def _podbay(self) -> Podbay:
        return Podbay(config=self.config)

    @default("config_file")
    def _default_config_file(self):
        return self._podbay().config_file

    data_dir = Unicode(
        config=True,
        help="""Where podbay keeps its quota book, homes, workspace logs and demo volumes.

        c.PodbaySpawnerMixin.data_dir = "/var/lib/podbay"
        """,
    )

    @default("data_dir")
    def _default_data_dir(self):
        return self._podbay().data_dir

    db_url = Unicode(
        config=True,
        help="""SQLAlchemy URL of the quota book; SQLite in data_dir by default.

        c.PodbaySpawnerMixin.db_url = "postgresql://podbay@db/podbay"
        """,
    )

    @default("db_url")
    def _default_db_url(self):
        # c.Podbay.db_url (or PODBAY_DB_URL) if set, else SQLite in this data_dir.
        return Podbay(config=self.config, data_dir=self.data_dir).db_url

    @validate("db_url")
    def _driver(self, proposal):
        return database_url(proposal.value)  # as c.Podbay.db_url: postgresql:// means psycopg 3

    service_url = Unicode(
        "",
        config=True,
        help="""Where workspaces reach podbay's REST service (its /services/podbay/api/v1 lives
        under it), given to them as PODBAY_SERVICE_URL so that `podbay` works in a workspace
        terminal with no login. hubconfig.configure sets it.""",
    )

    log_tail_lines = Integer(
        12, config=True, help="How many lines of a workspace's output to show when it dies while starting.")
    ready_poll_interval = Float(
        0.05, config=True, help="Seconds between checks that a starting workspace listens or has died.")

    podbay_backend = Unicode(
        config=True,
        help="""The `podbay.backends` plugin this spawner runs workspaces for: its placement (or
        none, where the engine places devices) and capacity source. hubconfig.configure sets
        it to the deployment's backend; a spawner class defaults to the backend it was written for.""",
    )

    @property
    def portal(self) -> Portal:
        return shared_portal(os.path.abspath(self.config_file), self.db_url, os.path.abspath(self.data_dir),
                             self.podbay_backend)

    @property
    def podbay_key(self) -> str:
        return f"workspace:{self.user.name}/{self.name}"

    def _groups(self) -> list[str]:
        return [g.name for g in self.user.groups]

    # --- the form --------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        # A callable, so availability is computed each time the page is shown.
        return PodbaySpawnerMixin._render_options_form

    @staticmethod
    def _render_options_form(spawner: "PodbaySpawnerMixin") -> str:
        portal, user, groups = spawner.portal, spawner.user.name, spawner._groups()
        team = portal.team_for(user, groups)
        snap = portal.book.snapshot()  # one for the choices and the quota line above them
        choices = portal.choices(user, groups, team, snap)
        standing = portal.standing(user, team, snap)
        available = [c.profile.id for c in choices if c.available]
        default_profile = "cpu" if "cpu" in available else (available[0] if available else None)
        return _TEMPLATES.get_template("options_form.html").render(
            team=team,
            teams=portal.cfg.teams_of(user, groups),
            units_left=fmt_units(standing.units_left),
            units_total=fmt_units(standing.quota.units),
            workspaces=standing.workspaces,
            workspaces_max=standing.quota.workspaces_per_user,
            images=portal.cfg.images,
            default_image=portal.cfg.default_image.name,
            choices=choices,
            default_profile=default_profile,
            volumes=portal.volumes_for(user, groups),
            fmt_units=fmt_units,
        )

    def options_from_form(self, formdata):
        options = {}
        for key in ("image", "profile", "team"):
            values = formdata.get(key) or []
            if values and values[0]:
                options[key] = values[0]
        options["volumes"] = list(formdata.get("volumes", []))
        return options

    # --- start and stop ----------------------------------------------------------------

    podbay_request: Request | None = None
    podbay_allocation: Allocation | None = None
    podbay_settings: dict[str, str] = {}
    # A backend that hands secrets over its own way (Kubernetes: a Secret) keeps them out of
    # the environment podbay builds.
    podbay_secrets_apart = False

    def podbay_claim_ref(self) -> dict:
        """What the claim records to find the workspace again before the backend says more
        (Kubernetes: its pod, which DCGM's exporter names in its utilisation series)."""
        return {}

    async def start(self):
        # A spawner whose start failed is started again (JupyterHub keeps it): a stop during
        # this start's claim must give back this claim, not look for the last one.
        self.podbay_request = self.podbay_allocation = None
        portal = self.portal
        # The user, the groups and the key are the hub's ORM objects: read them here, on the
        # hub's loop, never in the thread below.
        groups, options = self._groups(), dict(self.user_options or {})
        user, key = self.user.name, self.podbay_key
        claim_ref = self.podbay_claim_ref()

        def validate_and_claim():
            # One hop off the loop for the whole step, timed where it runs: what the hub's
            # loop adds while busy (a storm of spawns) is the hub's, not podbay's.
            t0 = time.perf_counter()
            try:
                request = portal.validate(user, groups, options)
                # The image's and team's settings and the person's secrets (read before the
                # claim: a secret that cannot be opened refuses the start, claiming nothing).
                settings = portal.settings_env(user, request.team, request.image.name,
                                               with_secrets=not self.podbay_secrets_apart)
                # JupyterHub never starts a server that runs, so anything still held under
                # this name belongs to a workspace that died without being stopped.
                allocation = portal.claim(key=key, kind="workspace", user=user, team=request.team,
                                          demand=request.demand, quota=request.quota, replace=True,
                                          ref=claim_ref)
            except ClaimRefused as e:
                e.elapsed_ms = (time.perf_counter() - t0) * 1000
                raise
            self.podbay_settings = settings
            return request, allocation, (time.perf_counter() - t0) * 1000

        t_loop = time.perf_counter()
        try:
            request, allocation, elapsed_ms = await asyncio.to_thread(validate_and_claim)
        except OptionsRefused as e:
            raise SpawnException(f"Cannot start this workspace: {e}.", reason="options") from None
        except SecretsUnavailable as e:
            raise SpawnException(f"Cannot start this workspace: {e}.", reason="secrets", status_code=503) from None
        except QuotaExceeded as e:
            self.log.info("%s refused (quota) in %.1f ms", self.podbay_key, e.elapsed_ms)
            raise SpawnException(f"Quota: {e}.", reason="quota", status_code=403) from None
        except ClaimRefused as e:
            self.log.info("%s refused (capacity) in %.1f ms", self.podbay_key, e.elapsed_ms)
            raise SpawnException(f"No capacity: {e}.", reason="capacity", status_code=503) from None
        self.podbay_request, self.podbay_allocation = request, allocation
        # How long the quota check and the claim took (benchmarks/spawn_storm.py reads it).
        self.log.info("%s claimed %s for %s: %s (%.1f ms; %.1f ms with the wait for the hub's loop)",
                      self.podbay_key, request.profile.id, request.team or "no team",
                      ", ".join(allocation.devices) or "no device", elapsed_ms,
                      (time.perf_counter() - t_loop) * 1000)
        try:
            self.podbay_prepare(request)
            return await super().start()
        except BaseException:
            await asyncio.to_thread(self._release)
            raise

    async def wait_listening(self, ip: str, port: int, died: Callable[[], Awaitable[str | None]]) -> None:
        """Return once the workspace accepts connections; fail at once if it has died.

        Without this the hub notices a dead workspace only when its HTTP timeout runs out
        (JupyterHub 6.1 may even answer 500 "Exception is not set"). `died` answers None
        while the workspace lives, else what the user should read: the exit status and the
        last lines of its output."""
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            why = await died()
            if why is not None:
                raise SpawnException(why, reason="exited", status_code=500)
            try:
                # Without blocking the hub's loop (on a cluster the address is another node's).
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 0.5)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(self.ready_poll_interval)
            else:
                writer.close()
                return
        # Past the deadline the hub's own wait reports the timeout in its usual words.

    def podbay_prepare(self, request: Request) -> None:
        """Hook for backends: turn the validated request into spawner settings
        (mounts, device requests, resources) just before the backend starts."""

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            # Keep the devices claimed while the workspace may still be using them.
            if await self.poll() is not None:
                if await asyncio.to_thread(self._release):
                    self.log.info("%s released its devices", self.podbay_key)
            else:
                self.log.error("%s did not stop; its devices stay claimed", self.podbay_key)

    async def run_post_stop_hook(self):
        # JupyterHub calls stop() only on a workspace that still runs: one that ended by
        # itself (it exited, Slurm's walltime, a node lost) passes through here alone, after
        # every stop, and gives its devices back here.
        await maybe_future(super().run_post_stop_hook())
        if await self.poll() is not None and await asyncio.to_thread(self._release):
            self.log.info("%s ended by itself and released its devices", self.podbay_key)

    def _release(self) -> bool:
        """Give back this workspace's claim: the one this spawner made where it knows it (not
        a later one under the same key), else whatever the key holds (after a hub restart)."""
        return self.portal.book.release(self.podbay_key, only=getattr(self, "podbay_allocation", None))

    def get_env(self):
        env = super().get_env()
        env.update(self.podbay_env())
        return env

    def podbay_env(self) -> dict[str, str]:
        req, alloc = self.podbay_request, self.podbay_allocation
        if req is None or alloc is None:
            return {}
        own = workspace_env(profile=req.profile.id, image=req.image.name, team=req.team,
                            units=fmt_units(alloc.units), volumes=[v.name for v in req.volumes],
                            devices=alloc.devices if self.portal.places_devices else None,
                            service_url=self.service_url)
        return {**self.podbay_settings, **own}
