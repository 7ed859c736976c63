"""The caller's own: secrets for workspaces and jobs, SSH keys, and how SSH reaches them."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Path
from fastapi.responses import PlainTextResponse, Response

from ...backends.base import Backend
from ...secrets import SecretRefused, SecretsUnavailable
from ...sshkeys import KeyRefused
from ..context import Service, open_every_workspace
from ..errors import ApiError
from ..hubclient import Caller
from ..schemas import ERRORS, SecretIn, SecretOut, SshKeyIn, SshKeyOut, SshOut

log = logging.getLogger("podbay.service")


def router(svc: Service, prefix: str) -> APIRouter:
    portal, jobs = svc.portal, svc.jobs
    secrets, keys, caller = svc.secrets, svc.keys, svc.caller
    api = APIRouter(prefix=prefix, responses=ERRORS)

    async def sync_secrets(user: str) -> None:
        """Where the engine keeps a copy (a Kubernetes Secret), bring it up to date now; if the
        engine is out of reach, the person's next start does."""
        if not jobs.backend.secrets_apart:
            return
        try:
            await jobs.backend.sync_secrets(user, await asyncio.to_thread(secrets.values, user))
        except Exception as e:  # noqa: BLE001 - the engine's words, never a value
            log.warning("could not bring %s's secrets to the engine now (%s); their next start will",
                        user, type(e).__name__)

    @api.get("/secrets", response_model=list[SecretOut], summary="Your secrets' names (never their values)")
    async def list_secrets(who: Caller = Depends(caller)):
        return [SecretOut(**s) for s in await asyncio.to_thread(secrets.names, who.name)]

    @api.put("/secrets/{name}", status_code=204, summary="Set one of your secrets, for every workspace and job you start")
    async def put_secret(body: SecretIn, name: str = Path(max_length=255), who: Caller = Depends(caller)):
        try:
            await asyncio.to_thread(secrets.put, who.name, name, body.value.get_secret_value())
        except SecretRefused as e:
            raise ApiError(400, "invalid_secret", str(e)) from None
        except SecretsUnavailable as e:
            raise ApiError(503, "secrets_unavailable", str(e)) from None
        log.info("%s set the secret %s", who.name, name)
        await sync_secrets(who.name)
        return Response(status_code=204)

    @api.delete("/secrets/{name}", status_code=204, summary="Remove one of your secrets")
    async def delete_secret(name: str = Path(max_length=255), who: Caller = Depends(caller)):
        if not await asyncio.to_thread(secrets.remove, who.name, name):
            raise ApiError(404, "not_found", f"you have no secret {name}")
        log.info("%s removed the secret %s", who.name, name)
        await sync_secrets(who.name)
        return Response(status_code=204)

    @api.get("/keys", response_model=list[SshKeyOut], summary="Your SSH public keys")
    async def list_keys(who: Caller = Depends(caller)):
        return [SshKeyOut(**k) for k in await asyncio.to_thread(keys.list, who.name)]

    @api.post("/keys", response_model=SshKeyOut, status_code=201, summary="Register an SSH public key")
    async def add_key(body: SshKeyIn, who: Caller = Depends(caller)):
        # A key opens every workspace, for as long as it is registered.
        open_every_workspace(who, "registering an SSH key")
        try:
            added = await asyncio.to_thread(keys.add, who.name, body.key)
        except KeyRefused as e:
            raise ApiError(400, "invalid_key", str(e)) from None
        log.info("%s registered the SSH key %s", who.name, added["fingerprint"])
        return SshKeyOut(**added)

    @api.delete("/keys/{fingerprint:path}", status_code=204, summary="Remove one of your SSH keys")
    async def delete_key(fingerprint: str = Path(max_length=64), who: Caller = Depends(caller)):
        open_every_workspace(who, "removing an SSH key")
        if not await asyncio.to_thread(keys.remove, who.name, fingerprint):
            raise ApiError(404, "not_found", f"you have no key {fingerprint}")
        log.info("%s removed the SSH key %s", who.name, fingerprint)
        return Response(status_code=204)

    @api.get("/keys/authorized_keys", response_class=PlainTextResponse,
             summary="Your keys as an authorized_keys file (what a workspace's sshd asks at each login)")
    async def authorized_keys(who: Caller = Depends(caller)):
        return PlainTextResponse(await asyncio.to_thread(keys.authorized_keys, who.name))

    @api.get("/ssh", response_model=SshOut, summary="How SSH reaches your workspaces")
    async def ssh(who: Caller = Depends(caller)):
        plugin = portal.plugin or Backend()
        try:
            # Workspaces that are the person's own account (beside Slurm's run_as: person).
            account = await asyncio.to_thread(portal.workspace_account, who.name)
        except ValueError as e:
            raise ApiError(403, "no_account", str(e)) from None
        login = account.name if account else plugin.workspace_login()
        home = plugin.person_home(portal.cfg, account) if account else plugin.workspace_home(portal.data_dir, who.name)
        return SshOut(login=login, home=home, keys=len(await asyncio.to_thread(keys.list, who.name)))

    return api
