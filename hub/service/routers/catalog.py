"""What may be asked for: the catalog with what the caller may take now, capacity, the caller's quota and volumes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from ...portal import Portal
from ...quota import fmt_units
from ..context import Service
from ..hubclient import Caller
from ..picture import capacity_picture
from ..schemas import (
    ERRORS,
    CapacityOut,
    CatalogOut,
    DeviceOut,
    GpuOut,
    GpusOut,
    HolderOut,
    ImageOut,
    JobLimitOut,
    MeOut,
    NodeOut,
    NodePictureOut,
    PoolCapacity,
    PoolPictureOut,
    ProfileOut,
    QuotaOut,
    UsageOut,
    UsageRow,
    VolumeOut,
)


def router(svc: Service, prefix: str) -> APIRouter:
    portal, jobs = svc.portal, svc.jobs
    caller = svc.caller
    api = APIRouter(prefix=prefix, responses=ERRORS)

    @api.get("/catalog", response_model=CatalogOut, summary="Images and GPU profiles, with what the caller may take now")
    async def catalog(who: Caller = Depends(caller)):
        choices = await asyncio.to_thread(portal.choices, who.name, list(who.groups))
        return CatalogOut(
            images=[ImageOut(**i.model_dump()) for i in portal.cfg.images],
            profiles=[ProfileOut(id=c.profile.id, title=c.profile.title, kind=c.profile.spec.kind,
                                 description=c.profile.description, pools=c.profile.pools,
                                 gpu_units=float(c.units), gpu_units_text=fmt_units(c.units),
                                 total=c.total, free=c.free, available=c.available, reason=c.reason)
                      for c in choices])

    @api.get("/capacity", response_model=CapacityOut, summary="Per pool: profiles and devices, total, used and free")
    async def capacity(who: Caller = Depends(caller)):
        return await asyncio.to_thread(capacity_of, portal)

    @api.get("/capacity/gpus", response_model=GpusOut, summary="Every node's GPUs and who holds each device")
    async def gpus(who: Caller = Depends(caller)):
        return await asyncio.to_thread(gpus_of, portal)

    @api.get("/me", response_model=MeOut, summary="The caller, their teams, quota and usage")
    async def me(who: Caller = Depends(caller)):
        def compute():
            team = portal.team_for(who.name, list(who.groups))
            st = portal.standing(who.name, team)
            q = st.quota
            return MeOut(
                name=who.name, admin=who.admin, teams=portal.cfg.teams_of(who.name, list(who.groups)), team=team,
                quota=QuotaOut(gpu_units=float(q.units), workspaces_per_user=q.workspaces_per_user, job_gpus=q.job_gpus),
                usage=UsageOut(gpu_units=float(st.units_used), workspaces=st.workspaces, job_gpus=st.job_gpus))
        out = await asyncio.to_thread(compute)
        limit = await jobs.backend.team_limit(out.team)
        return out.model_copy(update={"job_limit": JobLimitOut(**limit)}) if limit else out

    @api.get("/volumes", response_model=list[VolumeOut], summary="Volumes the caller may mount")
    async def volumes(who: Caller = Depends(caller)):
        return [VolumeOut(name=v.name, description=v.description, mount_path=f"~/{v.target}", read_only=v.read_only)
                for v in portal.volumes_for(who.name, list(who.groups))]

    return api


def capacity_of(portal: Portal) -> CapacityOut:
    snap = portal.book.snapshot()
    if "capacity" in snap.memo:
        return snap.memo["capacity"]
    pools = []
    for pool in portal.cfg.pools:
        profiles = {}
        for p in portal.cfg.profiles:
            if pool in p.pools and p.spec.kind != "cpu":
                total, free = portal.counts(p.spec, [pool], snap)
                profiles[p.id] = UsageRow(total=total, used=total - free, free=free)
        devices = {kind: UsageRow(total=u.total, used=u.used, free=u.free)
                   for kind, u in portal.capacity.devices(pool, snap).items()}
        states = portal.capacity.node_states(pool)
        nodes = [NodeOut(name=n.name, state=n.state, usable=n.usable, reason=n.reason, gpus=n.gpus,
                         gpus_used=n.gpus_used) for n in states]
        pools.append(PoolCapacity(pool=pool, profiles=profiles, devices=devices, nodes=nodes))
    snap.memo["capacity"] = CapacityOut(pools=pools)
    return snap.memo["capacity"]


def gpus_of(portal: Portal) -> GpusOut:
    def holder(h: dict | None) -> HolderOut | None:
        if h is None:
            return None
        return HolderOut(user=h.get("user"), what=h["what"], profile=h.get("profile"), kind=h.get("kind"))

    return GpusOut(pools=[PoolPictureOut(name=pool["name"], nodes=[
        NodePictureOut(name=node["name"], state=node.get("state"), reason=node.get("reason"), gpus=[
            GpuOut(index=g["index"], model=g["model"], kind=g["kind"], on_request=bool(g.get("on_request")),
                   free_units=g["free_units"],
                   devices=[DeviceOut(id=d["id"], label=d["label"], units=fmt_units(d.get("units", 1)),
                                      holder=holder(d["holder"])) for d in g["devices"]])
            for g in node["gpus"]])
        for node in pool["nodes"]]) for pool in capacity_picture(portal)])
