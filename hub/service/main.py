"""`python -m podbay.hub.service`: the service as JupyterHub runs it, everything it needs
from the environment the hub gives it."""

from __future__ import annotations

import hashlib
import logging
import os

from ..jobs import JobManager
from ..jobs.model import JOB_POOL
from ..training import PoolEngines
from ..portal import Portal
from ..quota import LedgerUnavailable
from ..usage.policy import Sampler
from ..usage.store import UsageStore
from .app import create_app
from .hubclient import HubClient

log = logging.getLogger("podbay.service")


async def follow_the_hub(stop_work, every: float = 1.0) -> None:
    """End with the hub that started this service. JupyterHub stops its managed services when
    it stops, but not when it is killed (SIGKILL, the OOM killer): this service would then run
    its job scheduler on the quota book beside the next hub's service, each starting the
    same queued jobs. So the scheduler and the sampler stop at once (`stop_work`), before the
    requests still open (a followed job log, through a proxy that outlived the hub) are cut
    at the end of uvicorn's grace period. A service started by something else than a hub
    process (a container's init, pid 1) has no parent to follow."""
    import asyncio
    import signal

    parent = os.getppid()
    if parent <= 1:
        return
    while os.getppid() == parent:
        await asyncio.sleep(every)
    log.error("the hub that started this service (pid %d) is gone: stopping, so that a new hub's service "
              "runs alone", parent)
    stop_work()
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    from urllib.parse import urlparse

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s podbay-service] %(message)s")
    # One line per request would be one per exporter per usage.interval: the service says
    # what matters in its own words.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = os.environ
    from ..backends import BackendError, chosen, load

    try:
        portal = Portal.open(env["PODBAY_CONFIG"], env["PODBAY_DB_URL"], env["PODBAY_DATA_DIR"],
                             env.get("PODBAY_BACKEND"))
    except (LedgerUnavailable, BackendError) as e:
        raise SystemExit(f"podbay-service: {e}") from None
    try:
        name = chosen(portal.cfg, env.get("PODBAY_BACKEND"))
        plugin = load(name)
        backend = plugin.training(portal)
        engines = portal.cfg.pool_engines(name)
        if engines:
            # Pools another engine runs (workspaces on docker, training on Slurm).
            trainers = {engine: load(engine).training(portal) for engine in set(engines.values())}
            backend = PoolEngines(backend, {pool: trainers[engine] for pool, engine in engines.items()},
                                  JOB_POOL if JOB_POOL in portal.cfg.pools else next(iter(portal.cfg.pools)))
    except BackendError as e:
        raise SystemExit(f"podbay-service: {e}") from None
    jobs = JobManager(portal, backend)
    # Where the service itself reaches the hub's API. JupyterHub gives a managed service its
    # hub_connect_url (on a cluster http://hub:8081: the hub pod calling its own Service, a
    # hairpin that CNIs without hairpin mode drop), so the
    # cluster set-up passes the hub's own address in its pod (PODBAY_HUB_API_URL).
    api_url = env.get("PODBAY_HUB_API_URL") or env["JUPYTERHUB_API_URL"]
    hub = HubClient(api_url, env["JUPYTERHUB_API_TOKEN"])
    # PODBAY_PAUSE_JOBS=1: accept and queue jobs but start none (maintenance of the pool).
    paused = env.get("PODBAY_PAUSE_JOBS") == "1"
    if paused:
        log.warning("PODBAY_PAUSE_JOBS is set: jobs are queued, none is started")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/services/podbay/")
    # `podbay login` pairs with a browser session, and podbay's pages live in one: the
    # browser logs in to the hub by OAuth (hub/browser.py).
    from jupyterhub.services.auth import HubOAuth

    from ..browser import BrowserSession, TrustedProxies, shares_origin
    from .pages import pages_router
    from .pairing import pairing_router

    oauth = (HubOAuth(api_url=api_url, api_token=env["JUPYTERHUB_API_TOKEN"], cache_max_age=0)
             if env.get("JUPYTERHUB_CLIENT_ID") else None)
    # Other people's workspaces on the pages' own origin (hub/browser.py says what is off then).
    exposed = shares_origin(env, plugin.isolates(portal.cfg))
    if exposed:
        log.warning("workspaces share the hub's origin (no subdomain_host): approving `podbay login` in the browser, "
                    "and jobs' output and cancel on the pages, are off (PODBAY_SHARED_ORIGIN=accept turns them on)")
    session = BrowserSession(oauth, hashlib.sha256(f"podbay-session:{env['JUPYTERHUB_API_TOKEN']}".encode()).digest(),
                             prefix, exposed)
    url = urlparse(env.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8003"))
    bind = env.get("PODBAY_SERVICE_BIND") or url.hostname or "127.0.0.1"
    # Whose X-Forwarded-For is believed: the proxy's. By default this machine's own addresses
    # (the proxy runs beside the hub: the loopback, or the address the service listens on,
    # the docker network's gateway); a workspace calling the service directly is counted by
    # its own address.
    own = [bind] if bind not in ("0.0.0.0", "::", "") else []
    proxies = TrustedProxies.parse(env.get("PODBAY_TRUSTED_PROXIES"), ["127.0.0.0/8", "::1/128", *own])
    background = [lambda: plugin.serve(portal)]
    follow_proxies = plugin.follow_proxies(env, proxies.found)
    if follow_proxies is not None:
        background.append(follow_proxies)
    elif env.get("PODBAY_TRUSTED_PROXY_PODS"):
        log.warning("PODBAY_TRUSTED_PROXY_PODS is set, but the %s backend does not find proxies by their pods: "
                    "only PODBAY_TRUSTED_PROXIES (and this machine's addresses) are trusted", plugin.name)
    pairing = pairing_router(prefix, hub.api,
                             int(portal.cfg.auth.cli_token_days * 86400), session, hub.forget, proxies)
    from ..usage.policy import HubServers

    sampler = Sampler(portal.cfg, UsageStore(portal.book), portal.inventory, HubServers(hub.api),
                      job_pod_prefix=plugin.job_pod_prefix(portal.cfg))
    pages = pages_router(prefix, portal, jobs, session)
    app = create_app(portal, jobs, hub, prefix, run_scheduler=not paused, background=background,
                     pairing=pairing, sampler=sampler, pages=pages, watch=follow_the_hub)
    # On a cluster the URL names the hub's Service, which the pod cannot bind: PODBAY_SERVICE_BIND
    # (config/helm/values.yaml sets 0.0.0.0) says where to listen instead.
    # proxy_headers off: the peer stays the peer (TrustedProxies decides whose header counts).
    # A stop waits this long for open requests (a followed log runs until its job ends).
    # Idle connections stay open for an hour, as the hub's Tornado server keeps them: the proxy
    # keeps its connections here for the next request with no idle limit of its own, and one
    # closed by uvicorn's default (5 s) just as the proxy sends on it is a 503 to the person.
    uvicorn.run(app, host=bind, port=url.port or 8003, proxy_headers=False,
                log_level="info", timeout_graceful_shutdown=10, timeout_keep_alive=3600,
                access_log=False)
