"""The decisions every front end shares: who may take what, and what is free.

The spawn form, user_options validation and (later) the REST service all ask this one
object, so the form can never offer what the server would refuse.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Image, PodbayConfig, Profile, Quota, Volume, load_config
from .inventory import Inventory
from .environment import settings_env
from .quota import Demand, QuotaBook, Snapshot, fmt_units
from .quota.book import NoCapacity
from .identity import ClusterAccount, cluster_account
from .quota.capacity import CapacitySource, InventoryCapacity, PoolCapacities
from .quota.placement import DevicePlacement, Mix, Placement, mix_of

# How far back the recorded demand says what people ask for (where MIG instances are made
# per request), and how long that answer is kept.
MIX_PERIOD = 30 * 86400.0
MIX_TTL = 600.0

if TYPE_CHECKING:
    from .backends.base import Backend


class OptionsRefused(Exception):
    """user_options that cannot be honoured; the message is meant for the user."""


class WorkspaceOptions(BaseModel):
    """What a user may ask for when starting a workspace (form or REST API)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    profile: str = "cpu"
    volumes: list[str] = Field(default_factory=list)
    team: str | None = None


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile
    units: Fraction
    free: int  # -1: unlimited
    total: int
    reason: str | None  # why it can't be taken now, or None

    @property
    def available(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class VolumeChoice:
    volume: Volume


@dataclass
class Request:
    image: Image
    profile: Profile
    volumes: list[Volume]
    team: str | None
    quota: Quota
    pools: list[str] = field(default_factory=list)
    demand: Demand | None = None


@dataclass(frozen=True)
class Standing:
    """A person against their quota: the quota that counts (their team's, or the default), what
    they hold now, and what is left of it."""

    team: str | None
    quota: Quota
    units_used: Fraction
    workspaces: int
    job_gpus: int

    @property
    def units_left(self) -> Fraction:
        return max(self.quota.units - self.units_used, Fraction(0))


class Portal:
    """One deployment's config with its quota book, placement and capacity source.

    `placement` is None where the engine places devices (Kubernetes, Slurm): then claims
    record only the units a profile weighs, and workspaces get no CUDA_VISIBLE_DEVICES."""

    def __init__(self, cfg: PodbayConfig, book: QuotaBook, data_dir: Path, *,
                 placement: Placement | None, capacity: CapacitySource | None = None,
                 inventory: Inventory | None = None, plugin: "Backend | None" = None):
        self.cfg = cfg
        # The backend: what else it knows about its workspaces (the account and home SSH
        # logs in to).
        self.plugin = plugin
        self.book = book
        self.inventory = inventory if inventory is not None else Inventory.from_config(cfg)
        self.placement = placement
        self.capacity = capacity or InventoryCapacity(self.inventory)
        self._secrets = None
        self.data_dir = Path(data_dir)
        # GPUs whose MIG instances are made per request (hub/mig): made after each claim,
        # removed after each release.
        self.mig = None
        if placement is not None and self.inventory.on_request:
            from .mig import OnRequestSlices

            self.mig = OnRequestSlices(self.inventory, book, self.data_dir)
            if isinstance(placement, DevicePlacement) and placement.mix is None:
                placement.mix = self.demand_mix
        self._mix: tuple[float, Mix] | None = None
        self._mix_lock = threading.Lock()

    @classmethod
    def open(cls, config_path: str | Path, db_url: str, data_dir: str | Path, backend: str | None = None) -> "Portal":
        """The portal of a deployment, with its backend's placement and capacity source
        (`backend` overrides podbay.yaml's `backend:`)."""
        from .backends import chosen, load

        cfg = load_config(config_path, backend)
        name = chosen(cfg, backend)
        plugin = load(name)
        inventory = Inventory.from_config(cfg)
        capacity = plugin.capacity(cfg, inventory)
        engines = cfg.pool_engines(name)
        if engines:
            # Pools another engine runs (a Slurm training pool): that engine's view of them.
            sources = {engine: load(engine).capacity(cfg, inventory) for engine in set(engines.values())}
            capacity = PoolCapacities(capacity, {pool: sources[engine] for pool, engine in engines.items()})
        return cls(cfg, QuotaBook(db_url), Path(data_dir), placement=plugin.placement(cfg, inventory),
                   capacity=capacity, inventory=inventory, plugin=plugin)

    @cached_property
    def runs_as_people(self) -> bool:
        """Whether workspaces run as people's cluster accounts (an engine of this deployment
        runs their jobs as them: slurm's run_as: person). podbay.yaml says; it is read once."""
        from .backends import runs_as_people

        return self.plugin is not None and runs_as_people(self.cfg, self.plugin.name)

    def workspace_account(self, user: str) -> "ClusterAccount | None":
        """The cluster account a person's workspaces run as, where an engine of this
        deployment runs their jobs as them (slurm's run_as: person); None: the hub's own.
        NoClusterAccount says why a person has none."""
        if not self.runs_as_people:
            return None
        return cluster_account(self.cfg, user)

    @property
    def places_devices(self) -> bool:
        return self.placement is not None

    def claim(self, *, key: str, kind: str, user: str, team: str | None, demand: Demand, quota: Quota,
              **kw):
        """The quota book's claim, with this deployment's placement. Where the engine places,
        a workspace the cluster has no room for now is refused (after the quota, which comes
        first, and after the book replaced what a dead holder of the key held)."""
        def claim():
            return self.book.claim(key=key, kind=kind, user=user, team=team, demand=demand, quota=quota,
                                   placement=self.placement, **kw)

        if self.mig is not None:
            self.mig.before_claim(demand.spec)
        allocation = claim()
        if self.mig is not None:
            allocation = self.mig.make_for(allocation, again=claim)
        if self.placement is None and kind == "workspace":
            why = self.capacity.shortage(demand.spec, list(demand.pools))
            if why:
                self.book.release(key, refused="capacity")
                raise NoCapacity(f"no {demand.profile_id} is free: {why}")
        return allocation

    def tidy_mig(self) -> None:
        """Remove the MIG instances no claim holds on the on-request GPUs (at the hub's start)."""
        if self.mig is not None:
            self.mig.tidy()

    def demand_mix(self) -> Mix:
        """What people asked for over MIX_PERIOD (granted or not), one request of each MIG
        profile on offer added, so that nothing on offer counts for nothing."""
        now = time.time()
        with self._mix_lock:
            if self._mix is None or now - self._mix[0] > MIX_TTL:
                prior = {p.id: 1.0 for p in self.cfg.profiles if p.spec.kind == "mig"}
                self._mix = (now, mix_of(self.book.requests_per_profile(now - MIX_PERIOD), prior))
            return self._mix[1]

    # --- settings and secrets ----------------------------------------------------------

    @property
    def secrets(self):
        from .secrets import SecretStore, key_from_env

        if self._secrets is None:
            self._secrets = SecretStore(self.book, key_from_env())
        return self._secrets

    def settings_env(self, user: str, team: str | None, image: str, with_secrets: bool = True) -> dict[str, str]:
        """What podbay.yaml (the image's and the team's env:) and the person (their secrets)
        add to a workspace or job; SecretsUnavailable when there are secrets and no key."""
        img = self.cfg.image(image)
        team_cfg = self.cfg.teams.get(team) if team else None
        return settings_env(dict(img.env) if img else {}, dict(team_cfg.env) if team_cfg else {},
                            self.secrets.values(user) if with_secrets else {})

    # --- people --------------------------------------------------------------------

    def team_for(self, user: str, groups: list[str], requested: str | None = None) -> str | None:
        teams = self.cfg.teams_of(user, groups)
        if requested is not None:
            if requested not in teams:
                raise OptionsRefused(
                    f"you are not in team {requested!r}"
                    + (f"; your teams: {', '.join(teams)}" if teams else "")
                )
            return requested
        return teams[0] if teams else None

    def quota_for(self, team: str | None) -> Quota:
        return self.cfg.teams[team].quota if team else self.cfg.default_quota

    def may_mount(self, volume: Volume, user: str, teams: list[str]) -> bool:
        a = volume.allow
        return a.everyone or user in a.users or bool(set(teams) & set(a.teams)) or user in self.cfg.admins

    def volumes_for(self, user: str, groups: list[str]) -> list[Volume]:
        teams = self.cfg.teams_of(user, groups)
        return [v for v in self.cfg.volumes if self.may_mount(v, user, teams)]

    def volume_source(self, volume: Volume) -> Path | None:
        """The directory of a volume (None for one that is only a Docker volume or a PVC)."""
        if volume.source is None:
            return None
        src = Path(volume.source)
        return src if src.is_absolute() else self.data_dir / src

    # --- what is free --------------------------------------------------------------

    def profile_units(self, profile: Profile) -> Fraction:
        """GPU units one workspace of this profile weighs."""
        return self.capacity.unit_weight(profile.spec, profile.pools)

    def demand(self, profile: Profile) -> Demand:
        return Demand(profile.id, profile.spec, tuple(profile.pools), self.profile_units(profile))

    def standing(self, user: str, team: str | None, snap: Snapshot | None = None) -> Standing:
        """Where the person stands against the quota that counts for them (their team's, or
        the default): one answer for the form, the catalog and `/me`."""
        snap = snap or self.book.snapshot()
        return Standing(team, self.quota_for(team), snap.units_of(team, user), snap.workspaces.get(user, 0),
                        snap.job_gpus_of(team, user))

    def choices(self, user: str, groups: list[str], team: str | None = None,
                snap: Snapshot | None = None) -> list[ProfileChoice]:
        team = self.team_for(user, groups, team)
        snap = snap or self.book.snapshot()
        standing = self.standing(user, team, snap)
        quota, left, n_ws = standing.quota, standing.units_left, standing.workspaces
        out = []
        for p in self.cfg.profiles:
            units = self.profile_units(p)
            total, free = self.counts(p.spec, p.pools, snap)
            reason = None
            if n_ws >= quota.workspaces_per_user:
                reason = f"you already run {n_ws} of {quota.workspaces_per_user} workspaces"
            elif units > left:
                who = f"team {team}" if team else "users without a team"
                reason = (f"needs {fmt_units(units)} GPU units; {who} has "
                          f"{fmt_units(left)} of {fmt_units(quota.units)} left")
            elif free == 0:
                reason = "none free right now" if total else "none on the nodes of this pool"
            out.append(ProfileChoice(p, units, free, total, reason))
        return out

    def counts(self, spec, pools: list[str], snap: Snapshot | None = None) -> tuple[int, int]:
        """(total, free) workspaces of a profile in pools, from the backend's capacity source."""
        return self.capacity.counts(spec, pools, snap or self.book.snapshot())

    # --- validation ----------------------------------------------------------------

    # --- the checks a workspace and a job share (one place for both) --------------------

    def checked_image(self, name: str | None) -> Image:
        """The catalog image of that name (None: the default), or OptionsRefused naming the choices."""
        image = self.cfg.image(name) if name else self.cfg.default_image
        if image is None:
            names = ", ".join(i.name for i in self.cfg.images)
            raise OptionsRefused(f"unknown image {name!r}; choose one of: {names}")
        return image

    def checked_volumes(self, user: str, teams: list[str], names) -> list[Volume]:
        """The catalog volumes of those names (each once), all of which the person may mount,
        or OptionsRefused for the first that is unknown or not theirs."""
        volumes = []
        for name in dict.fromkeys(names):
            vol = self.cfg.volume(name)
            if vol is None:
                raise OptionsRefused(f"unknown volume {name!r}")
            if not self.may_mount(vol, user, teams):
                # Not who may: the API can be asked about any name, and the teams and people
                # behind a volume are not everyone's to list.
                raise OptionsRefused(f"you may not mount volume {name!r}: ask its owners or the platform team")
            volumes.append(vol)
        return volumes

    def validate(self, user: str, groups: list[str], raw: dict[str, Any] | None) -> Request:
        """Turn raw user_options into a Request, or raise OptionsRefused saying why."""
        try:
            opts = WorkspaceOptions.model_validate(raw or {})
        except ValidationError as e:
            problems = []
            for err in e.errors():
                name = ".".join(str(x) for x in err["loc"]) or "options"
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown option {name!r} (podbay takes image, profile, volumes, team)")
                else:
                    problems.append(f"{name}: {err['msg']}")
            raise OptionsRefused("; ".join(problems)) from None

        image = self.checked_image(opts.image)
        profile = self.cfg.profile(opts.profile)
        if profile is None:
            ids = ", ".join(p.id for p in self.cfg.profiles)
            raise OptionsRefused(f"unknown GPU profile {opts.profile!r}; choose one of: {ids}")
        team = self.team_for(user, groups, opts.team)
        teams = self.cfg.teams_of(user, groups)
        volumes = self.checked_volumes(user, teams, opts.volumes)
        return Request(image, profile, volumes, team, self.quota_for(team), profile.pools, self.demand(profile))
