"""What every router of the service works with, built once by create_app: the portal, the
job manager, the hub client and the stores, and the dependency that says who is calling."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from ..jobs import JobManager
from ..portal import Portal
from ..secrets import SecretStore, key_from_env
from ..sshkeys import KeyStore
from ..usage.policy import IdlePolicy, Sampler
from ..usage.store import UsageStore
from .errors import ApiError
from .hubclient import Caller, HubClient


@dataclass
class Service:
    portal: Portal
    jobs: JobManager
    hub: HubClient
    sampler: Sampler | None = None
    secrets: SecretStore = field(init=False)
    keys: KeyStore = field(init=False)
    usage: UsageStore = field(init=False)
    policy: IdlePolicy = field(init=False)

    def __post_init__(self):
        self.secrets = SecretStore(self.portal.book, key_from_env())
        self.keys = KeyStore(self.portal.book)
        self.usage = UsageStore(self.portal.book)
        self.policy = IdlePolicy(self.portal.cfg, self.portal.cfg.usage.interval)

    async def caller(self, request: Request) -> Caller:
        """The route's dependency: the caller of a valid token with access to this service."""
        hub = self.hub
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() not in ("token", "bearer") or not token:
            raise ApiError(401, "unauthorized",
                           "send a JupyterHub API token as 'Authorization: token <token>' (make one at /hub/token)")
        who = await hub.resolve(token)
        if who is None:
            raise ApiError(401, "unauthorized",
                           "the token is not valid (expired or revoked?); make a new one at /hub/token")
        if not who.may_access:
            needed = " or ".join(sorted(hub.auth.access_scopes))
            raise ApiError(403, "missing_scope",
                           f"this token of {who.name} lacks the scope {needed}, which podbay's service "
                           "requires: use a token made at /hub/token without narrowing its scopes, or one "
                           f"that includes {needed}")
        return who


def open_every_workspace(who: Caller, what: str) -> None:
    """Refuse what would give more than the caller has: a key or a token that opens every one
    of the person's workspaces needs a login that reaches them all."""
    if not who.reaches_all_workspaces():
        raise ApiError(403, "forbidden", f"{what} needs a login that reaches all your workspaces (podbay login on "
                                         "your own computer), not a workspace's token or a narrower one")
