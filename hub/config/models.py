"""podbay.yaml's shape: one pydantic model per section, each field with the comment that says
what it is (the generated reference, docs/reference/podbay-yaml.md, reads those comments).

Long because: it is one model per section of podbay.yaml, each small.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from ..gpu import GPU_UUID, MIG_NAME, MIG_UUID
from ..usage.settings import IdleSettings, UsageSettings

Slug = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
UserName = Annotated[str, Field(min_length=1, max_length=255)]
# What a login name may be unless a deployment says otherwise (auth.username_pattern): what
# identity providers' usernames and e-mail addresses use, nothing that means something in a
# URL or a path.
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._@+-]{0,127}$"
# YAML reads `CODE_SERVER_NODE: 24` as a number; a build argument is text either way.
BuildArg = Annotated[str, BeforeValidator(lambda v: str(v) if type(v) is int else v)]


def default_config_path() -> Path:
    """podbay.yaml when none is named: PODBAY_CONFIG; config/podbay.yaml of a checkout, run
    from its top; else the demo that ships with the package (hub/demo links to the same
    file), so a pip-installed podbay starts anywhere."""
    named = os.environ.get("PODBAY_CONFIG")
    if named:
        return Path(named)
    here = Path("config/podbay.yaml")
    if here.is_file():
        return here
    return Path(__file__).resolve().parent.parent / "demo" / "podbay.yaml"


class _Model(BaseModel):
    # Typos in an operator's file must be errors, not silently ignored keys.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _settings_env(v: dict[str, str]) -> dict[str, str]:
    from ..environment import check_env_name

    for name, value in v.items():
        check_env_name(name)
        if "\0" in str(value):
            raise ValueError(f"the value of {name} contains a NUL character")
    return {k: str(val) for k, val in v.items()}


class Image(_Model):
    # The image's name in the catalog, what people and jobs ask for (`--image pytorch`).
    name: Slug
    # What the spawn form and the TUI show.
    display_name: str
    # A line under it on the form (frameworks, CUDA version).
    description: str = ""
    # The container image for the docker and kubernetes backends. The local backend runs
    # the hub's own Python environment and treats the image as a label.
    image: str
    # A folder with the image's Dockerfile, relative to this file: `podbay images build`.
    build: str | None = None
    # Docker build arguments for it (CODE_SERVER_VERSION, CODE_SERVER_SOURCE: npm, …).
    build_args: dict[str, BuildArg] = {}
    # Preselected on the form and used when a request names no image (the first image otherwise).
    default: bool = False
    # Settings every workspace and job of this image gets (not secrets: podbay.yaml is no place for them).
    env: dict[str, str] = {}

    _env = field_validator("env")(lambda v: _settings_env(v))

    @field_validator("build_args")
    @classmethod
    def _hub_version_is_fixed(cls, v: dict[str, str]) -> dict[str, str]:
        if "JUPYTERHUB_VERSION" in v:
            raise ValueError("JUPYTERHUB_VERSION is always the hub's own version "
                             "(jupyterhub-singleuser must match it); remove it from build_args")
        return v


PROFILE_ID = re.compile(
    r"^(?:(?P<cpu>cpu)|mig-(?P<mig>\S+)|shared-1/(?P<replicas>\d+)|gpu-(?P<count>\d+))$"
)


@dataclass(frozen=True)
class ProfileKind:
    kind: Literal["cpu", "mig", "shared", "full"]
    mig_profile: str | None = None
    replicas: int | None = None
    count: int = 0


def parse_profile_id(profile_id: str) -> ProfileKind:
    m = PROFILE_ID.match(profile_id)
    if not m:
        raise ValueError(
            f"profile id {profile_id!r} is not one of cpu, mig-<profile> (mig-1g.10gb), "
            "shared-1/<N> (shared-1/4) or gpu-<N> (gpu-2)"
        )
    if m["cpu"]:
        return ProfileKind("cpu")
    if m["mig"]:
        name = m["mig"]
        base = split_ci(name)[1]
        if not MIG_NAME.match(base):
            raise ValueError(f"{name!r} is not a MIG profile name like 1g.10gb or 3g.40gb")
        return ProfileKind("mig", mig_profile=name, count=1)
    if m["replicas"]:
        n = int(m["replicas"])
        if n < 2:
            raise ValueError(f"shared-1/{n}: a time-sliced share needs at least 2 replicas")
        return ProfileKind("shared", replicas=n, count=1)
    n = int(m["count"])
    if n < 1:
        raise ValueError("gpu-0 asks for no GPU: use the cpu profile")
    return ProfileKind("full", count=n)


def split_ci(mig_name: str) -> tuple[int | None, str]:
    """`2c.7g.40gb` (a compute instance) → (2, "7g.40gb"); `3g.40gb` → (None, "3g.40gb")."""
    m = re.match(r"^(\d+)c\.(.+)$", mig_name)
    return (int(m[1]), m[2]) if m else (None, mig_name)


class Profile(_Model):
    # What it offers: cpu, mig-<profile> (mig-1g.10gb), shared-1/<N> (a time-sliced share) or
    # gpu-<N> (N whole GPUs).
    id: str
    # The form's name for it (default: said from the id, "MIG slice 1g.10gb").
    display_name: str | None = None
    # A line under it on the form.
    description: str = ""
    # The pools it runs in: workspaces in the dev pool, jobs in the training pool, or both.
    pools: list[str] = ["dev"]

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        parse_profile_id(v)
        return v

    @property
    def spec(self) -> ProfileKind:
        return parse_profile_id(self.id)

    @property
    def title(self) -> str:
        if self.display_name:
            return self.display_name
        s = self.spec
        return {
            "cpu": "CPU only",
            "mig": f"MIG slice {s.mig_profile}",
            "shared": f"Shared GPU (1/{s.replicas})",
            "full": f"{s.count} whole GPU{'s' if s.count > 1 else ''}",
        }[s.kind]


class Pool(_Model):
    # What the pool is for, as the capacity views show it.
    description: str = ""
    # The engine that runs this pool's jobs, where it is not `backend:`'s: workspaces on one
    # engine (docker, kubernetes), the training pool on another (slurm), over storage both
    # sides share. None: the backend's own.
    engine: Slug | None = None
    # The engine's queue for jobs of this pool, where the backend has one: a Kueue
    # LocalQueue (kubernetes), a Slurm partition (slurm).
    queue: str | None = None
    # Kubernetes: the labels of the pool's nodes (podbay.io/pool: dev).
    node_selector: dict[str, str] = {}
    # Kubernetes: the taints its pods tolerate (a training pool's nvidia.com/gpu:NoSchedule), as in
    # a pod spec.
    tolerations: list[dict[str, Any]] = []


class MigDeviceDecl(_Model):
    # The slice's MIG profile (1g.10gb), as `nvidia-smi -L` names it.
    profile: str
    # The MIG device's UUID (MIG-…), what CUDA_VISIBLE_DEVICES gets.
    uuid: str
    # The GPU instance id (`nvidia-smi -L` of old drivers, NVML, `nvidia-smi mig -lgi`): how
    # DCGM names a MIG instance's utilisation (GPU_I_ID), which carries no MIG UUID.
    gpu_instance: int | None = Field(default=None, ge=0)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        if not MIG_UUID.match(v):
            raise ValueError(f"{v!r} is not a MIG device UUID (MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        return v


class GpuDecl(_Model):
    # The GPU's index on its node (nvidia-smi's).
    index: int = Field(ge=0)
    # The GPU's UUID (GPU-…): what a workspace's CUDA_VISIBLE_DEVICES names and DCGM's utilisation
    # is matched by.
    uuid: str
    # Its product name (NVIDIA A100-SXM4-80GB): which MIG profiles it has and what a slice weighs.
    model: str
    # Its memory, shown on the capacity views.
    memory_mib: int | None = Field(default=None, gt=0)
    # A list means MIG mode is on, with these devices.
    mig: list[MigDeviceDecl] | None = None
    # Time-slicing: this GPU is offered as N shares (no memory isolation between them).
    replicas: int | None = Field(default=None, ge=2, le=64)
    # MIG mode is on and podbay makes each MIG instance when a request is granted (at the start
    # position that keeps the most room for what people ask for), and removes it when the
    # workspace or job ends: no fixed layout, so no `mig:` list. podbay owns this GPU's MIG
    # instances: one no workspace or job holds is removed (once nothing runs on it: until
    # then its slots count as taken).
    mig_on_request: bool = False

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        if not GPU_UUID.match(v):
            raise ValueError(f"{v!r} is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        return v


class TimeSlicing(_Model):
    # How many shares each of these GPUs is offered as.
    replicas: int = Field(ge=2, le=64)
    # The discovered GPUs (by index) offered as shares.
    gpus: list[int]


class Node(_Model):
    # The machine's name, as the capacity views show it.
    name: Slug
    # The pool it belongs to (a key of pools:).
    pool: str
    # Its GPUs, as `podbay gpus --as-inventory` prints them (or use discover).
    gpus: list[GpuDecl] = []
    # Ask NVML on this machine at hub start instead of declaring `gpus`.
    discover: bool = False
    # With `discover`: which discovered GPUs (by index) to offer as time-sliced shares.
    time_slicing: TimeSlicing | None = None
    # With `discover`: which discovered GPUs (by index, MIG mode on) get their MIG instances
    # made per request (see the GPU's `mig_on_request`).
    mig_on_request: list[int] = []


class Access(_Model):
    # Teams whose members may use it.
    teams: list[str] = []
    # People who may use it, whatever their team. Both empty: everyone.
    users: list[str] = []

    @property
    def everyone(self) -> bool:
        return not self.teams and not self.users


class Volume(_Model):
    # The volume's name, what people attach (`--volume imagenet`); it appears at ~/data/<name>.
    name: Slug
    # A line under it on the form.
    description: str = ""
    # A directory (relative paths live under the data directory), bind-mounted. The docker
    # backend needs it as a path on the Docker host. An engine may provide the volume its own
    # way instead, under its own section (docker.named_volumes, kubernetes.claims): whether
    # each volume has a source the backend can mount is the backend's check.
    source: str | None = None
    # Where it appears in the workspace; relative to the home directory.
    mount_path: str | None = None
    # Mounted read-only (datasets); false for shared scratch space.
    read_only: bool = True
    # Who may attach it; nobody else is shown it.
    allow: Access = Access()

    @property
    def target(self) -> str:
        return self.mount_path or f"data/{self.name}"

    @model_validator(mode="before")
    @classmethod
    def _engine_fields_moved(cls, data):
        # Before 0.9 a volume named its PVC and Docker volume itself: say where they went.
        if isinstance(data, dict):
            name = data.get("name", "<name>")
            moved = {"pvc": f"kubernetes: {{claims: {{{name}: {data.get('pvc')}}}}}",
                     "docker_volume": f"docker: {{named_volumes: {{{name}: {data.get('docker_volume')}}}}}"}
            for key, where in moved.items():
                if key in data:
                    raise ValueError(f"{key} moved to its engine's section: write {where}")
        return data


class Quota(_Model):
    gpu_units: Decimal = Field(default=Decimal(0), ge=0, description="GPU units held by workspaces at once")
    # Workspaces one member may run at once, GPU or not.
    workspaces_per_user: int = Field(default=2, ge=1)
    job_gpus: int = Field(default=0, ge=0, description="whole GPUs held by training jobs at once")

    @property
    def units(self) -> Fraction:
        return Fraction(self.gpu_units)


class Team(_Model):
    # The team's name as people read it.
    display_name: str | None = None
    # Login names of its members (with auth: oidc, the provider's groups add more: idp_groups).
    members: list[UserName] = []
    # The identity provider's groups that make a person a member (auth: oidc, or an
    # authenticator of your own that manages groups): "/ai/vision", "vision-devs". Names at
    # the provider need not be the team's. A team that lists them is joined through them
    # only: a JupyterHub group of the team's own name no longer counts (with groups from a
    # provider where people make their own, anyone could make one called "vision").
    idp_groups: list[str] = []
    # What the team may hold at once, together: GPU units for workspaces, whole GPUs for jobs.
    quota: Quota = Quota()
    # Settings every workspace and job of a member gets, for the services around the cluster
    # (WANDB_BASE_URL, WANDB_ENTITY, WANDB_PROJECT); a person's own keys are secrets
    # (`podbay secrets set`), not here.
    env: dict[str, str] = {}

    _env = field_validator("env")(lambda v: _settings_env(v))


# Environment variable names: what a secret's name may be.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Auth(_Model):
    """Who may log in, and how (`auth:`).

    demo: the embedded mode's shared password (`podbay up` on the loopback only).
    oidc: any OpenID Connect provider (Keycloak, Entra ID, Okta, GitLab), configured from
    its issuer by discovery; the provider's groups decide teams, who may log in and admins.
    github, gitlab, azuread: OAuthenticator's own classes, their settings under `options`."""

    # demo, oidc, github, gitlab or azuread (above).
    type: Literal["demo", "oidc", "github", "gitlab", "azuread"] = "demo"
    # oidc: the provider's issuer URL (its /.well-known/openid-configuration is read at start).
    issuer: str | None = None
    # The client podbay is registered as at the provider.
    client_id: str | None = None
    # The client secret never in this file: the name of an environment variable that holds
    # it, or a file (a mounted Kubernetes Secret) that does.
    client_secret_env: Annotated[str, StringConstraints(pattern=ENV_NAME)] | None = None
    # A file holding the client secret (a mounted Kubernetes Secret).
    client_secret_file: str | None = None
    # The claim that names the user, and the one that lists their groups; dotted for nested
    # claims (Keycloak's realm roles: realm_access.roles).
    username_claim: str = "preferred_username"
    # The claim that lists the user's groups (dotted for nested claims).
    groups_claim: str = "groups"
    # The scopes podbay asks the provider for (add groups where the provider needs it for the groups
    # claim).
    scopes: list[str] = ["openid", "profile", "email"]
    # Who may log in: members of these groups, of any team's idp_groups, or of admin_groups.
    allowed_groups: list[str] = []
    # Members of these groups at the provider are JupyterHub admins.
    admin_groups: list[str] = []
    # Everyone the provider authenticates (then those in no team get the default quota).
    allow_all: bool = False
    # The provider's access token in the workspace's environment (OAUTH_ACCESS_TOKEN), for
    # data services that accept it.
    pass_access_token: bool = False
    # Names a login may have (JupyterHub's Authenticator.username_pattern, matched after the
    # name is lowercased). The default keeps out everything with a meaning in a URL or a
    # path (`#`, `?`, `/`, `%`, spaces): a deployment whose provider names people otherwise
    # may widen it. Team members and admins in this file must match it.
    username_pattern: str = USERNAME_PATTERN
    # How long a token from `podbay login` (approved in the browser) lasts.
    cli_token_days: float = Field(30, gt=0, le=365)
    # Where the provider sends people back: the hub's public URL + /hub/oauth_callback
    # (what you register at the provider). `podbay up` knows its own; on a cluster, give it.
    callback_url: str | None = None
    # The OAuthenticator class's own settings, passed through (e.g. GitHub's allowed_organizations).
    options: dict[str, Any] = {}

    @field_validator("username_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"auth.username_pattern is not a regular expression: {e}") from None
        return v

    def name_allowed(self, name: str) -> bool:
        return re.fullmatch(self.username_pattern, name) is not None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "demo":
            return self
        missing = [k for k in ("client_id",) if not getattr(self, k)]
        if self.type == "oidc" and not self.issuer:
            missing.insert(0, "issuer")
        if missing:
            raise ValueError(f"auth type {self.type} needs {' and '.join(missing)}")
        if self.issuer is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.issuer):
            raise ValueError(f"auth.issuer must be the provider's URL (https://…), not {self.issuer!r}")
        if bool(self.client_secret_env) == bool(self.client_secret_file):
            raise ValueError("give the client secret's place as one of client_secret_env (an environment "
                             "variable's name) or client_secret_file, not the secret itself")
        return self

    def client_secret(self) -> str:
        """The secret, from its variable or file; ValueError saying which is missing."""
        if self.client_secret_env:
            value = os.environ.get(self.client_secret_env, "")
            if not value:
                raise ValueError(f"the environment variable {self.client_secret_env} (auth.client_secret_env) "
                                 "is not set: it holds the client secret the identity provider issued")
            return value
        path = Path(self.client_secret_file or "")
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read the client secret from {path} (auth.client_secret_file): "
                             f"{e.strerror}") from None
        if not value:
            raise ValueError(f"{path} (auth.client_secret_file) is empty")
        return value


# A Unix account name as useradd and sudo take it (no "root"-like tricks: a number is not one).
ACCOUNT_NAME = r"^[a-z_][a-z0-9_.-]{0,31}$"


class ClusterAccounts(_Model):
    """Whose cluster (Unix) account a person's Slurm jobs run as (`cluster_accounts:`).

    By default a person's login name is their account. Where the identity provider's names
    are not (an e-mail address, Entra ID's object IDs), `table` maps them, or `strip_domain`
    takes the part before the @ of the site's own domain."""

    # podbay login name -> cluster account, where they differ.
    table: dict[UserName, Annotated[str, Field(pattern=ACCOUNT_NAME)]] = {}
    # The site's domain: alice@corp.example -> alice for "corp.example" only (after the table,
    # which wins); a login of any other domain is no account.
    strip_domain: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+$")
    # Accounts below this uid are the system's (root, daemons): nobody's job runs as one.
    min_uid: int = Field(1000, ge=1)
    # Accounts nobody's jobs or workspaces run as, whatever their uid: the service's own (which
    # may act as everyone), administrators'.
    never: list[Annotated[str, Field(pattern=ACCOUNT_NAME)]] = ["podbay"]
    # Where this server sees the cluster's shared filesystem, where it mounts it elsewhere than
    # the cluster's nodes do: {path on the nodes: path here}, e.g. {/gpfs: /mnt/gpfs}. Homes
    # (the accounts' own, as the password database gives them) and volumes' sources are read
    # through it here, and handed to Slurm as the nodes see them. Unset: the same paths.
    paths: dict[str, str] = {}

    @field_validator("paths")
    @classmethod
    def _paths_are_absolute_and_plain(cls, v: dict[str, str]) -> dict[str, str]:
        for cluster, here in v.items():
            for path in (cluster, here):
                if (not path.startswith("/") or path.startswith("//") or path == "/"
                        or posixpath.normpath(path) != path.rstrip("/")):
                    raise ValueError(f"{path!r} is not a plain absolute folder such as /gpfs (no .., not /)")
        v = {k.rstrip("/"): here.rstrip("/") for k, here in v.items()}
        # Each folder here is one folder of the nodes': back from here must be unambiguous.
        heres = list(v.values())
        for i, a in enumerate(heres):
            for b in heres[i + 1:]:
                if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
                    raise ValueError(f"{a} and {b} overlap: two of the nodes' folders cannot be one here")
        return v


class PodbayConfig(_Model):
    # The catalog of workspace and job images.
    images: list[Image] = Field(min_length=1)
    # The GPU profiles people choose from (cpu, MIG slices, shares, whole GPUs).
    profiles: list[Profile] = Field(min_length=1)
    # Groups of nodes: where workspaces (dev) and jobs (training) run.
    pools: dict[str, Pool] = {"dev": Pool(), "training": Pool()}
    # The GPU nodes and their GPUs, where podbay places devices itself (local, docker); the
    # cluster's own view otherwise.
    nodes: list[Node] = []
    # The data volumes people may attach, each with who may.
    volumes: list[Volume] = []
    # Teams (JupyterHub groups) with their members and quotas.
    teams: dict[Slug, Team] = {}
    # Quota for users who are in no team.
    default_quota: Quota = Quota(gpu_units=Decimal(0), workspaces_per_user=1, job_gpus=0)
    # Login names of JupyterHub admins.
    admins: list[UserName] = []
    # How people log in.
    auth: Auth = Auth()
    # Which cluster account each person's jobs run as, where an engine runs them as the
    # person (slurm).
    cluster_accounts: ClusterAccounts = ClusterAccounts()
    # Where workspaces and jobs run: a `podbay.backends` entry point (local, docker, …).
    # PODBAY_BACKEND or --backend override it. Each installed backend's settings live under
    # its own key (docker:), validated by the model the backend declares: see config_model().
    backend: Slug = "local"
    # GPU utilisation (where it is read, how long it is kept) and the idle rules.
    usage: UsageSettings = UsageSettings()
    # What happens to GPUs left idle, and to workspaces nobody uses.
    idle: IdleSettings = IdleSettings()

    # Lookups used everywhere else.
    def pool_engines(self, backend: str) -> dict[str, str]:
        """Pools whose jobs another engine than `backend` runs: pool → engine."""
        return {name: pool.engine for name, pool in self.pools.items() if pool.engine and pool.engine != backend}

    def image(self, name: str) -> Image | None:
        return next((i for i in self.images if i.name == name), None)

    def profile(self, pid: str) -> Profile | None:
        return next((p for p in self.profiles if p.id == pid), None)

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)

    @property
    def default_image(self) -> Image:
        return next((i for i in self.images if i.default), self.images[0])

    def teams_of(self, user: str, groups: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Teams in config order: declared members, or the identity provider's groups a team
        lists (which the login keeps in step), or else a JupyterHub group of the team's name
        (podbay loads teams as groups; an admin may add people to one)."""
        return [t for t, team in self.teams.items()
                if user in team.members or (any(g in groups for g in team.idp_groups) if team.idp_groups
                                            else t in groups)]

    def demo_users(self) -> list[str]:
        users = {m for t in self.teams.values() for m in t.members} | set(self.admins)
        return sorted(users)
