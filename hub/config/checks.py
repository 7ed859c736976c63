"""What refers to what in podbay.yaml: a profile's pools exist and can hold it, MIG profiles
exist on the GPUs declared, teams, admins and volume users are valid names, and what the run's
backend says is wrong for it (`Backend.check`)."""

from __future__ import annotations

from pathlib import Path

from ..gpu import family_for, known_mig_profiles, layout_fits
from .errors import ConfigIssue
from .models import PodbayConfig, Profile, split_ci


# --- what refers to what ------------------------------------------------------


def _dupes(items, key):
    seen, out = set(), []
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            out.append((i, k))
        seen.add(k)
    return out


def check_semantics(cfg: PodbayConfig, backend: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def err(loc, msg):
        issues.append(ConfigIssue(tuple(loc), msg))

    from ..backends import available, load

    if backend not in available():
        err(("backend",), f"unknown backend {backend!r}: the installed ones are {', '.join(sorted(available()))}")
    else:
        try:
            plugin = load(backend)
        except Exception as e:  # noqa: BLE001 - whatever the plugin's package raised on import
            err(("backend",), f"the {backend} backend is installed but cannot be loaded ({type(e).__name__}: "
                              f"{e}): reinstall its package, or choose another backend")
        else:
            # What only the run's backend knows is wrong (a queue where it has none, …).
            for loc, msg in plugin.check(cfg):
                err(loc, msg)
    # Pools whose jobs another engine runs: that engine says what it needs of them.
    by_engine: dict[str, list[str]] = {}
    for pool, engine in cfg.pool_engines(backend).items():
        by_engine.setdefault(engine, []).append(pool)
    for engine, pools in by_engine.items():
        try:
            other = load(engine)
        except Exception:  # noqa: BLE001 - unknown, or its package is broken
            for pool in pools:
                err(("pools", pool, "engine"), f"unknown engine {engine!r}: the installed ones are "
                                               f"{', '.join(sorted(available()))}")
            continue
        for loc, msg in other.check_pools(cfg, pools, backend):
            err(loc, msg)
    for team_name, team in cfg.teams.items():
        for i, member in enumerate(team.members):
            if not cfg.auth.name_allowed(member):
                err(("teams", team_name, "members", i),
                    f"{member!r} is not a name anyone can log in with (auth.username_pattern "
                    f"{cfg.auth.username_pattern}): names are lowercase, without #, ?, / or spaces")
    for v, volume in enumerate(cfg.volumes):
        for i, user in enumerate(volume.allow.users):
            if not cfg.auth.name_allowed(user):
                err(("volumes", v, "allow", "users", i),
                    f"{user!r} is not a name anyone can log in with (auth.username_pattern "
                    f"{cfg.auth.username_pattern}): names are lowercase, without #, ?, / or spaces")
    for i, admin in enumerate(cfg.admins):
        if not cfg.auth.name_allowed(admin):
            err(("admins", i), f"{admin!r} is not a name anyone can log in with (auth.username_pattern "
                               f"{cfg.auth.username_pattern}): names are lowercase, without #, ?, / or spaces")
    for i, name in _dupes(cfg.images, lambda x: x.name):
        err(("images", i, "name"), f"image {name!r} is declared twice")
    if sum(1 for im in cfg.images if im.default) > 1:
        err(("images",), "more than one image says default: true")
    for i, pid in _dupes(cfg.profiles, lambda x: x.id):
        err(("profiles", i, "id"), f"profile {pid!r} is declared twice")
    for i, name in _dupes(cfg.volumes, lambda x: x.name):
        err(("volumes", i, "name"), f"volume {name!r} is declared twice")
    for i, name in _dupes(cfg.nodes, lambda x: x.name):
        err(("nodes", i, "name"), f"node {name!r} is declared twice")

    for r, rule in enumerate(cfg.idle.rules):
        for i, pool in enumerate(rule.pools):
            if pool not in cfg.pools:
                err(("idle", "rules", r, "pools", i), f"pool {pool!r} is not declared under pools: ({', '.join(cfg.pools)})")
        for i, pid in enumerate(rule.profiles):
            if cfg.profile(pid) is None:
                err(("idle", "rules", r, "profiles", i), f"profile {pid!r} is not declared under profiles:")
        if rule.action != "warn" and rule.warn_before < 2 * cfg.usage.interval:
            err(("idle", "rules", r, "warn_before"),
                f"warn_before ({rule.warn_before:g} s) must give the notice at least two rounds of usage.interval "
                f"({cfg.usage.interval:g} s) before the {rule.action}")
    if any(rule.action == "release-gpu" for rule in cfg.idle.rules):
        cpu = cfg.profile(cfg.idle.cpu_profile)
        if cpu is None or cpu.spec.kind != "cpu":
            err(("idle", "cpu_profile"), f"release-gpu restarts workspaces on the CPU profile {cfg.idle.cpu_profile!r}, "
                                         "which must be declared under profiles: (id: cpu)")

    uuids: dict[str, tuple] = {}
    for n, node in enumerate(cfg.nodes):
        if node.pool not in cfg.pools:
            err(("nodes", n, "pool"), f"pool {node.pool!r} is not declared under pools: ({', '.join(cfg.pools)})")
        if node.discover and node.gpus:
            err(("nodes", n), "give either discover: true or a gpus: list, not both")
        if node.time_slicing and not node.discover:
            err(("nodes", n, "time_slicing"), "time_slicing is for discovered GPUs; declared GPUs set replicas:")
        if node.mig_on_request and not node.discover:
            err(("nodes", n, "mig_on_request"), "mig_on_request here is for discovered GPUs; declared GPUs set "
                                                "mig_on_request: true each")
        if backend == "kubernetes" and (node.mig_on_request or any(g.mig_on_request for g in node.gpus)):
            err(("nodes", n), "mig_on_request is for the local and docker backends, where podbay places devices; "
                              "on Kubernetes MIG Manager sets each node's layout (podbay advise --apply)")
        if node.time_slicing and set(node.time_slicing.gpus) & set(node.mig_on_request):
            err(("nodes", n, "mig_on_request"), "a GPU is either time-sliced or MIG, not both")
        for i, _idx in _dupes(node.gpus, lambda g: g.index):
            err(("nodes", n, "gpus", i, "index"), f"GPU index {node.gpus[i].index} appears twice on this node")
        for g, gpu in enumerate(node.gpus):
            loc = ("nodes", n, "gpus", g)
            for where, uuid in [(loc + ("uuid",), gpu.uuid)] + [
                (loc + ("mig", m, "uuid"), d.uuid) for m, d in enumerate(gpu.mig or [])
            ]:
                if uuid in uuids:
                    err(where, f"UUID {uuid} is already used at {ConfigIssue(uuids[uuid], '').place}")
                uuids.setdefault(uuid, where)
            if gpu.mig is not None and gpu.replicas:
                err(loc, "podbay does not time-slice MIG devices: give either mig: or replicas:")
            if gpu.mig_on_request:
                if gpu.mig is not None or gpu.replicas:
                    err(loc + ("mig_on_request",), "podbay makes this GPU's MIG instances per request: "
                                                   "give no mig: list and no replicas:")
                elif family_for(gpu.model, gpu.memory_mib) is None:
                    err(loc + ("mig_on_request",), f"{gpu.model} does not support MIG, or podbay does not "
                                                   "know its MIG geometry")
                continue
            if gpu.mig is None:
                continue
            family = family_for(gpu.model, gpu.memory_mib)
            if family is None:
                err(loc + ("mig",), f"{gpu.model} does not support MIG")
                continue
            gi_profiles: dict[str, int] = {}
            bad = False
            for m, dev in enumerate(gpu.mig):
                ci, base = split_ci(dev.profile)
                if base not in family.profiles:
                    err(loc + ("mig", m, "profile"), f"MIG profile {dev.profile} does not exist on {gpu.model}")
                    bad = True
                    continue
                gi_profiles[base] = gi_profiles.get(base, 0) + (ci or family.profiles[base].compute_slices)
            if not bad:
                # Compute instances of one GPU instance share it: count whole instances.
                layout = [
                    p for p, used in gi_profiles.items()
                    for _ in range(-(-used // family.profiles[p].compute_slices))
                ]
                if not layout_fits(family, layout):
                    err(loc + ("mig",), f"MIG layout {' + '.join(sorted(layout))} does not fit on one {gpu.model}")

    for p, prof in enumerate(cfg.profiles):
        loc = ("profiles", p)
        for pool in prof.pools:
            if pool not in cfg.pools:
                err(loc + ("pools",), f"pool {pool!r} is not declared under pools: ({', '.join(cfg.pools)})")
        issues += [ConfigIssue(loc, msg) for msg in _profile_fit_problems(cfg, prof)]

    for v, vol in enumerate(cfg.volumes):
        for t, team in enumerate(vol.allow.teams):
            if team not in cfg.teams:
                err(("volumes", v, "allow", "teams", t), f"team {team!r} is not declared under teams:")
        target = vol.target
        if target.startswith("/") or ".." in Path(target).parts:
            err(("volumes", v, "mount_path"), "mount_path must be a path inside the home directory, like data/imagenet")
    return issues


def _profile_fit_problems(cfg: PodbayConfig, prof: Profile) -> list[str]:
    """Whether a profile can ever be placed on the declared inventory of its pools.

    Pools with no declared nodes (the kubernetes backend, where the device plugin owns the
    inventory) are only checked for a MIG name that exists on some GPU."""
    spec = prof.spec
    if spec.kind == "cpu":
        return []
    nodes = [n for n in cfg.nodes if n.pool in prof.pools]
    if spec.kind == "mig" and split_ci(spec.mig_profile)[1] not in known_mig_profiles():
        return [f"MIG profile {spec.mig_profile} does not exist on any GPU podbay knows"]
    if not nodes or any(n.discover for n in nodes):
        return []
    gpus = [g for n in nodes for g in n.gpus]
    pools = ", ".join(prof.pools)
    if spec.kind == "mig":
        mig_gpus = [g for g in gpus if g.mig is not None or g.mig_on_request]
        if not mig_gpus:
            return [f"no GPU in pool {pools} is in MIG mode, so {prof.id} can never start"]
        if any(spec.mig_profile in {d.profile for d in g.mig or []} for g in mig_gpus):
            return []
        # podbay makes whole GPU instances, not compute instances inside one (1c.3g.40gb).
        made = [family_for(g.model, g.memory_mib) for g in mig_gpus if g.mig_on_request]
        if any(f is not None and spec.mig_profile in f.profiles for f in made):
            return []
        models = sorted({g.model for g in mig_gpus})
        families = {m: family_for(m, next(g.memory_mib for g in mig_gpus if g.model == m)) for m in models}
        # (A model without MIG is reported at its GPU.)
        missing = [m for m, f in families.items() if f is not None and split_ci(spec.mig_profile)[1] not in f.profiles]
        if missing:
            return [f"MIG profile {spec.mig_profile} does not exist on {m}" for m in missing]
        return [f"no GPU in pool {pools} has a {spec.mig_profile} MIG device"]
    if spec.kind == "shared":
        if not any(g.replicas == spec.replicas for g in gpus):
            return [f"no GPU in pool {pools} is time-sliced into {spec.replicas} (replicas: {spec.replicas})"]
        return []
    most = max((sum(1 for g in n.gpus if g.mig is None and not g.replicas and not g.mig_on_request) for n in nodes),
               default=0)
    if most < spec.count:
        return [f"no node in pool {pools} has {spec.count} whole GPUs (the most is {most})"]
    return []
