"""Layout advice (admins): the MIG and time-slicing layout each node's GPUs should have, from
the demand recorded over a period, and applying it where the engine can."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Query

from ...advice.advise import IDLE_WEIGHT, LayoutNotApplied, advise
from ...advice.render import GresNames, as_dict
from ...training import BackendUnavailable
from ...usage.demand import DemandLog
from ..context import Service, open_every_workspace
from ..errors import ApiError
from ..hubclient import Caller
from ..schemas import ERRORS, AdviceOut, ApplyIn, ApplyOut


def advice_for(portal, since: float, until: float, pools: set[str] | None = None,
               idle_weight: float = IDLE_WEIGHT) -> dict:
    """The advice on the GPUs this deployment's engines report (the backend's, and those of
    the pools another engine runs: a Slurm training pool), from the period's demand. An
    engine that cannot be asked is left out and said to be; only when it is all there is, the
    advice is refused."""
    from ...backends import load

    backend = portal.plugin
    if backend is None:
        raise ApiError(503, "unavailable", "no engine is loaded in this service: layout advice needs one")
    engines = {pool: backend.engine_of(portal.cfg, pool) for pool in portal.cfg.pools}
    wanted = [p for p in portal.cfg.pools if pools is None or p in pools]
    others: dict[str, list[str]] = {}
    for pool, engine in portal.cfg.pool_engines(backend.name).items():
        if pool in wanted:
            others.setdefault(engine, []).append(pool)
    asks = [(backend.name, backend.layouts, (portal,))]
    asks += [(engine, load(engine).pool_layouts, (portal, names)) for engine, names in others.items()]
    found, left_out = [], []
    for name, ask, args in asks:
        try:
            found += ask(*args)
        except BackendUnavailable as e:
            left_out.append(f"{name}: {e}")
    if left_out and not found:
        raise ApiError(503, "unavailable", "; ".join(left_out))
    found = [(g, h) for g, h in found if g.pool in wanted]
    holders = {(g.node, g.index): h for g, h in found}
    gpus = [g for g, _ in found]
    modes = {engine: load(engine).layout_modes(portal.cfg) for engine in set(engines.values())}
    requests = DemandLog(portal.book).requests(since, until, time.time(), pools={g.pool for g in gpus})
    advice = advise(portal.cfg, gpus, requests, holders=lambda g: holders.get((g.node, g.index), []),
                    since=since, until=until, idle_weight=idle_weight,
                    modes={pool: modes[engine] for pool, engine in engines.items()})
    slurm = getattr(portal.cfg, "slurm", None)
    gres = GresNames(slurm.gpu_type, dict(slurm.mig_types)) if slurm is not None else GresNames()
    out = as_dict(advice, engines, gres, left_out)
    out["engines"] = engines
    return out


def router(svc: Service, prefix: str) -> APIRouter:
    portal, caller = svc.portal, svc.caller
    api = APIRouter(prefix=prefix, responses=ERRORS)

    def admin(who: Caller) -> None:
        if not who.admin:
            raise ApiError(403, "forbidden", "layout advice is for admins: it shows everyone's requests and "
                                             "what runs on every GPU")

    @api.get("/advice", response_model=AdviceOut,
             summary="The MIG / time-slicing layout each node should have, from the demand of a period",
             description="For each GPU, its layout now and the one that would have refused the fewest of the "
                         "period's requests (replayed), with what changing it would interrupt; a mig-parted "
                         "config, podbay.yaml's nodes entries and the steps. Admins only.")
    async def get_advice(who: Caller = Depends(caller),
                         days: float = Query(30, gt=0, le=400, description="the period: the last so many days"),
                         pool: list[str] | None = Query(None, description="only these pools' nodes"),
                         idle_weight: float = Query(IDLE_WEIGHT, ge=0, le=10,
                                                    description="how much GPU time left idle counts beside "
                                                                "refusals, per average request's worth")):
        admin(who)
        unknown = [p for p in pool or [] if p not in portal.cfg.pools]
        if unknown:
            raise ApiError(400, "invalid_request", f"no pool {', '.join(unknown)}; pools: {', '.join(portal.cfg.pools)}")
        until = time.time()
        return await asyncio.to_thread(advice_for, portal, until - days * 86400, until, set(pool) if pool else None,
                                       idle_weight)

    @api.post("/advice/apply", response_model=ApplyOut,
              summary="Have the engine apply a node's advised layout (Kubernetes: MIG Manager's label)",
              description="The advice is made again here, from the same period, and only its config for "
                          "the node is applied: only where the engine applies layouts and nothing runs on "
                          "the node's GPUs; 409 with what to do otherwise. Admins, with a login that reaches "
                          "all their workspaces (not a workspace's token).")
    async def apply(body: ApplyIn, who: Caller = Depends(caller)):
        admin(who)
        # It can stop GPU work on a node: not from a token that code in a workspace can read.
        open_every_workspace(who, "applying a GPU layout")
        if portal.plugin is None:
            raise ApiError(503, "unavailable", "no engine is loaded in this service")
        why = portal.plugin.cannot_apply_layouts(portal)
        if why:
            raise ApiError(409, "not_applied", why)
        unknown = [p for p in body.pool or [] if p not in portal.cfg.pools]
        if unknown:
            raise ApiError(400, "invalid_request", f"no pool {', '.join(unknown)}; pools: {', '.join(portal.cfg.pools)}")
        until = time.time()
        advice = await asyncio.to_thread(advice_for, portal, until - body.days * 86400, until,
                                         set(body.pool) if body.pool else None, body.idle_weight)
        node = next((n for n in advice["nodes"] if n["node"] == body.node), None)
        if node is None:
            raise ApiError(404, "not_found", f"podbay advises on no node {body.node}; its nodes: "
                                             f"{', '.join(n['node'] for n in advice['nodes']) or 'none'}")
        if advice["engines"].get(node["pool"]) != portal.plugin.name:
            raise ApiError(409, "not_applied", f"{body.node} is in pool {node['pool']}, which "
                                               f"{advice['engines'].get(node['pool'])} runs: apply it there, as the "
                                               "advice's steps say")
        if not node["changes"]:
            return ApplyOut(node=body.node, config=node["config"], message=f"{body.node} already has the advised layout")
        if body.config is not None and body.config != node["config"]:
            raise ApiError(409, "advice_changed", f"the advice for {body.node} is now {node['config']}, not "
                                                  f"{body.config} (new demand since): look again with podbay advise")
        try:
            message = await portal.plugin.apply_layout(portal, body.node, node["config"])
        except LayoutNotApplied as e:
            raise ApiError(409, "not_applied", str(e)) from None
        return ApplyOut(node=body.node, config=node["config"], message=message)

    return api
