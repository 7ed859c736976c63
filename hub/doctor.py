"""`podbay doctor`: what will not work, found before any user finds it, each with its fix.

The stand-ins of the tests model what real systems refuse (tests/standins/); this runs the
same checks against the real thing, from where podbay runs: podbay.yaml, the hub's API as
the service reaches it, the utilisation source and the labels its series carry, and the
backend's own prerequisites (`Backend.doctor`: the cluster's rights, storage, GPU nodes and
Kueue; Docker's engine and GPU runtime; Slurm's commands, munge, partitions and accounts).
A check that cannot be made says so (a warning), and never passes for want of an answer.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .backends.base import Backend
    from .config import PodbayConfig

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was checked (or found wrong), and what to do about it."""

    level: Level
    what: str
    fix: str = ""

    @classmethod
    def ok(cls, what: str) -> "Finding":
        return cls("ok", what)

    @classmethod
    def warn(cls, what: str, fix: str = "") -> "Finding":
        return cls("warn", what, fix)

    @classmethod
    def fail(cls, what: str, fix: str) -> "Finding":
        return cls("fail", what, fix)


async def hub_api(url: str | None, token: str | None = None, timeout: float = 10) -> list[Finding]:
    """The hub's REST API as podbay's service reaches it (`url`: its /hub/api)."""
    import httpx

    if not url:
        return [Finding.warn("the hub's API was not checked: no URL given",
                             "run where the service runs (PODBAY_HUB_API_URL or JUPYTERHUB_API_URL set), "
                             "or give --hub-url http://HOST:8081/hub/api")]
    headers = {"Authorization": f"token {token}"} if token else {}
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
        return await _hub_api(http, url, token)


async def _hub_api(http, url: str, token: str | None) -> list[Finding]:
    import httpx

    try:
        r = await http.get(url.rstrip("/") + "/")
    except httpx.HTTPError as e:
        return [Finding.fail(f"the hub's API at {url} does not answer ({type(e).__name__}: {e})",
                             "podbay's service, the CLI and the TUI need it: check the address from where the "
                             "service runs (on a cluster the hub's own pod: http://127.0.0.1:8081/hub/api, not "
                             "the hub Service: a call from the hub pod through its own Service needs the CNI's hairpin "
                             "mode)")]
    try:
        version = r.json().get("version")
    except ValueError:
        version = None
    if r.status_code != 200 or not version:
        return [Finding.fail(f"{url} answered {r.status_code}, not JupyterHub's API",
                             "give the hub's API URL, ending in /hub/api")]
    out = [Finding.ok(f"the hub's API answers at {url} (JupyterHub {version})")]
    if token:
        # The service's own token (JUPYTERHUB_API_TOKEN where it runs): the hub knows it.
        try:
            me = await http.get(url.rstrip("/") + "/user")
        except httpx.HTTPError as e:
            me = None
            out.append(Finding.warn(f"the hub's API did not answer who the token is ({type(e).__name__})"))
        if me is not None and me.status_code != 200:
            out.append(Finding.fail(f"the hub refuses this token ({me.status_code}): podbay's service cannot check "
                                    "anyone's login", "run where the service runs (its JUPYTERHUB_API_TOKEN), or "
                                                      "check the service's api_token in the hub's configuration"))
        elif me is not None:
            out.append(Finding.ok(f"the hub accepts this token (as {me.json().get('name', '?')})"))
    return out


def redacted(text: str) -> str:
    """A URL's user and password out of what doctor prints."""
    import re

    text = re.sub(r"(//)[^/\s]*@", r"\1***@", text)  # up to the last '@' before the host
    return re.sub(r"((?:token|password|key)=)[^&\s]+", r"\1***", text)


async def utilisation(cfg: "PodbayConfig", engine_places: bool) -> list[Finding]:
    """The utilisation source answers, and on an engine that places devices (Kubernetes) its
    series name the pods that hold the GPUs, which is how workspaces are matched."""
    from .usage.sources import Source, SourceUnavailable

    settings = cfg.usage.source
    if settings.type == "none":
        return [Finding.ok("no utilisation source (usage.source.type: none): idle rules never act")] \
            if not cfg.idle.rules else [Finding.fail(
                "idle rules are set but usage.source.type is none: nothing is measured, so they never act",
                "set usage.source (dcgm, prometheus or nvml)")]
    source = Source(settings, window=60)
    try:
        readings = await source.read()
    except SourceUnavailable as e:
        return [Finding.fail(f"the utilisation source ({settings.type}) does not answer: {redacted(str(e))}",
                             "check usage.source's URL from where the service runs")]
    except Exception as e:  # noqa: BLE001 - NVML without a driver, and the like
        return [Finding.fail(f"the utilisation source ({settings.type}) cannot be read: {redacted(str(e))}",
                             "check usage.source")]
    finally:
        await source.aclose()
    if not readings:
        return [Finding.fail(f"the utilisation source ({settings.type}) answers but has no GPU series "
                             "(DCGM_FI_DEV_GPU_UTIL, DCGM_FI_PROF_GR_ENGINE_ACTIVE)",
                             "check that the DCGM exporters run on the GPU nodes and that the source scrapes them")]
    out = [Finding.ok(f"the utilisation source ({settings.type}) answers: {len(readings)} GPU series")]
    if settings.type == "prometheus" and not settings.selector:
        # Every target's DCGM series count: a pod of anyone's that Prometheus scrapes could
        # claim a workspace's GPU (its pod and UUID labels) and keep it looking busy.
        out.append(Finding.warn("usage.source.selector is empty: DCGM series from any target Prometheus scrapes "
                                "are read, not only the exporters'",
                                'set usage.source.selector to the exporters\' job, e.g. job="nvidia-dcgm-exporter"'))
    if not engine_places:
        return out
    if not any(r.pod for r in readings):
        out.append(Finding.fail(
            "no utilisation series names a pod: workspaces and jobs cannot be matched to their GPUs, so idle "
            "GPUs are never released and showback's 'used' stays empty",
            "turn the DCGM exporter's Kubernetes pod mapping on (the GPU operator's default; "
            "DCGM_EXPORTER_KUBERNETES=true) and, with Prometheus, keep its pod labels (honorLabels, or the "
            "exported_pod labels podbay reads)"))
    else:
        out.append(Finding.ok("utilisation series name their pods (pod/namespace, or exported_pod/"
                              "exported_namespace behind a ServiceMonitor)"))
    return out


def gpus_on_this_host(cfg: "PodbayConfig", discover=None) -> list[Finding]:
    """Where podbay places devices from podbay.yaml's nodes: (local, docker, the slurm
    backend's workspaces): every declared GPU and MIG device is one this host's driver sees,
    so no workspace is handed a device that is not there. `discover`: NVML by default."""
    from .discovery import DiscoveryError, discover_nvml

    declared = {g.uuid for n in cfg.nodes for g in n.gpus} | {
        m.uuid for n in cfg.nodes for g in n.gpus for m in (g.mig or [])}
    if not declared:
        return []
    try:
        found = (discover or discover_nvml)()
    except DiscoveryError as e:
        return [Finding.warn(f"this host's GPUs were not checked against nodes: ({e})",
                             "run podbay doctor on the GPU server itself")]
    seen = {g.uuid for g in found} | {m.uuid for g in found for m in g.mig_devices if m.uuid}
    missing = sorted(declared - seen)
    out = []
    if missing:
        out.append(Finding.fail(f"podbay.yaml's nodes: declare devices this host does not have: {', '.join(missing)} "
                                "(a workspace or job given one sees no GPU)",
                                "podbay gpus --as-inventory writes the nodes: entry from this host's driver"))
    extra = sorted(seen - declared - {g.uuid for g in found if g.mig_enabled})
    if extra:
        out.append(Finding.warn(f"this host has devices podbay.yaml does not declare (never handed out): "
                                f"{', '.join(extra)}", "add them under nodes: if they are for podbay"))
    if not missing:
        out.append(Finding.ok(f"the {len(declared)} declared GPUs and MIG devices are on this host"))
    return out


def closed_to_others(path: Path) -> Path | None:
    """Where another account is stopped on its way to `path` (a folder above it it may not
    enter, or the file itself it may not read or run); None where it is open to all."""
    # The way as named (a venv's bin/python is a link in the venv's folder) and where it leads.
    for way in dict.fromkeys((Path(os.path.abspath(path)), path.resolve())):
        for folder in reversed(way.parents):  # from / down
            if not folder.stat().st_mode & stat.S_IXOTH:
                return folder
    path = path.resolve()
    mode = path.stat().st_mode
    runs = path.is_dir() or mode & stat.S_IXUSR
    return None if mode & stat.S_IROTH and (not runs or mode & stat.S_IXOTH) else path


def installed_for_people(cfg: "PodbayConfig", backend: str) -> list[Finding]:
    """Where people's workspaces or jobs run podbay's own Python as their accounts (local
    workspaces, or Slurm without a container, beside slurm's run_as: person), every account
    must reach it: podbay installed in a home, a checkout or a venv private to its owner works
    for the hub and fails for everyone else, with no sentence but a Permission denied in a log."""
    import sysconfig

    from .backends import runs_as_people

    if not runs_as_people(cfg, backend) or (backend != "local" and cfg.slurm.container != "none"):
        return []
    python = Path(sys.executable)
    podbay = Path(__file__).resolve().parent
    needed = [python, Path(sysconfig.get_paths()["stdlib"]), podbay, python.parent / "jupyterhub-singleuser"]
    for path in needed:
        closed = closed_to_others(path) if path.exists() else None
        if closed is not None:
            return [Finding.fail(
                f"people's workspaces and jobs run podbay's Python ({python}) as their own accounts, but those "
                f"cannot reach {path}: {closed} is closed to them (mode {stat.S_IMODE(closed.stat().st_mode):o})",
                "install podbay where every account may read it, as a site installs its software "
                "(python3 -m venv /opt/podbay && /opt/podbay/bin/pip install 'podbay[hub]'), and run the hub "
                "from there; or open that folder to others (chmod o+x)")]
    return [Finding.ok(f"podbay's Python ({python}) and podbay itself are open to the accounts people's "
                       "workspaces and jobs run as")]


async def diagnose(cfg: "PodbayConfig", plugin: "Backend", *, hub_url: str | None = None,
                   token: str | None = None) -> list[Finding]:
    import asyncio

    findings = [Finding.ok(f"podbay.yaml is valid ({plugin.describe(cfg)})")]
    if plugin.places(cfg):
        findings += await asyncio.to_thread(gpus_on_this_host, cfg)
    findings += await hub_api(hub_url, token)
    findings += await utilisation(cfg, not plugin.places(cfg))
    findings += await plugin.doctor(cfg)
    findings += installed_for_people(cfg, plugin.name)
    # The engines of pools that are not the backend's (the hybrid's Slurm pool): theirs too.
    from .backends import load

    for engine in sorted(set(cfg.pool_engines(plugin.name).values())):
        findings += await load(engine).doctor(cfg)
    return findings


def render(findings: list[Finding], as_json: bool = False) -> str:
    if as_json:
        return json.dumps([asdict(f) for f in findings], indent=2)
    lines = []
    for f in findings:
        lines.append(f"{f.level:<4}  {f.what}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    lines.append(f"{failed} to fix, {warned} to look at" if failed or warned else "nothing to fix")
    return "\n".join(lines)
