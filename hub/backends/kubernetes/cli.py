"""`podbay k8s`: what the Zero to JupyterHub chart lacks, and the cluster as podbay counts it.
Registered through the `podbay.commands` entry points; the engine's modules load only when a
command runs."""

from __future__ import annotations

import os
import sys


def _kubernetes_config(path: str):
    """podbay.yaml as the kubernetes backend reads it, or exit 1 with every error."""
    from .. import BackendError, load
    from ...config import ConfigError, load_config

    try:
        load("kubernetes")
        return load_config(path, "kubernetes")
    except BackendError as e:
        raise SystemExit(f"podbay: {e}") from None
    except ConfigError as e:
        raise SystemExit(e.render()) from None


def cmd_k8s_manifests(args) -> int:
    """What the Zero to JupyterHub chart lacks, as YAML for `kubectl apply -f -`."""
    import yaml

    from .manifests import manifests

    cfg = _kubernetes_config(args.config)
    objects = manifests(cfg, cfg.kubernetes, hub_account=args.hub_account, hub_namespace=args.hub_namespace)
    print(f"# podbay k8s manifests for {args.config}: apply after the chart "
          f"(kubectl apply -f -); Kueue's objects need Kueue installed.")
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0


def cmd_k8s_values(args) -> int:
    """The chart's values podbay.yaml decides: the pre-puller of the catalog's images."""
    import yaml

    from .manifests import image_ref, prepuller_values

    cfg = _kubernetes_config(args.config)
    print(f"# podbay k8s values for {args.config}: give to helm after config/helm/values.yaml "
          "(-f config/helm/values.yaml -f this.yaml)")
    for image in cfg.images:
        if image_ref(image.image) is None:
            print(f"# {image.name} ({image.image}) is named by digest, which the pre-puller cannot pull: give a tag")
    print(yaml.safe_dump(prepuller_values(cfg), sort_keys=False), end="")
    return 0


def cmd_k8s_check(args) -> int:
    """The cluster as podbay counts it: free GPUs per pool and profile, and the nodes whose
    GPU Feature Discovery labels say what podbay.yaml does not know."""
    import asyncio

    from .api import KubernetesUnreachable, api_client, read_json
    from .capacity import ClusterCapacity
    from ...quota.book import Snapshot

    cfg = _kubernetes_config(args.config)

    async def read() -> tuple[list[dict], list[dict], list]:
        from kubernetes_asyncio import client

        from .doctor import storage

        api = await api_client(cfg.kubernetes.kubeconfig)
        async with api:
            core = client.CoreV1Api(api)
            nodes = await read_json(core.list_node, _request_timeout=30)
            pods = await read_json(core.list_pod_for_all_namespaces, _request_timeout=60)
            # Whether homes can bind and attach where they are used (podbay doctor says the rest).
            homes = await storage(api, cfg)
        return nodes.get("items") or [], pods.get("items") or [], homes

    try:
        nodes, pods, homes = asyncio.run(read())
    except KubernetesUnreachable as e:
        print(f"podbay: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the API server's or the network's words
        print(f"podbay: the API server does not answer ({e}); check kubernetes.kubeconfig", file=sys.stderr)
        return 1
    capacity = ClusterCapacity(cfg, cfg.kubernetes, lambda: (nodes, pods))
    nothing = Snapshot(0, frozenset(), {}, {}, {})
    print(f"{len(nodes)} nodes, {len(pods)} pods")
    for prof in cfg.profiles:
        if prof.spec.kind == "cpu":
            continue
        for pool in prof.pools:
            total, free = capacity.counts(prof.spec, [pool], nothing)
            print(f"  {pool:<12} {prof.id:<16} {free} free of {total}")
    problems = capacity.unknown()
    for problem in problems:
        print(f"warning: {problem}")
    for finding in homes:
        if finding.level != "ok":
            print(f"{'error' if finding.level == 'fail' else 'warning'}: {finding.what}"
                  + (f" (fix: {finding.fix})" if finding.fix else ""))
    return 1 if problems or any(f.level == "fail" for f in homes) else 0


def register(sub) -> None:
    k8s = sub.add_parser("k8s", help="podbay on a Kubernetes cluster")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", required=True)
    mf = k8s_sub.add_parser("manifests", help="print what the Zero to JupyterHub chart lacks (RBAC, Kueue "
                                              "queues, the time-slicing config), for kubectl apply -f -")
    mf.add_argument("--hub-account", default="hub", help="the hub's service account (the chart's: %(default)s)")
    mf.add_argument("--hub-namespace", help="the hub's namespace (default: kubernetes.namespace)")
    mf.set_defaults(func=cmd_k8s_manifests)
    kv = k8s_sub.add_parser("values", help="print the chart's values podbay.yaml decides (the pre-puller of the "
                                           "catalog's images), for helm -f")
    kv.set_defaults(func=cmd_k8s_values)
    kc = k8s_sub.add_parser("check", help="free GPUs per pool and profile as podbay counts them, and nodes "
                                          "whose GPU labels podbay.yaml does not know (exit 1)")
    kc.set_defaults(func=cmd_k8s_check)
    for p_ in (mf, kv, kc):
        p_.add_argument("--config", default=os.environ.get("PODBAY_CONFIG", "config/podbay.yaml"),
                        help="podbay.yaml (default: PODBAY_CONFIG or %(default)s)")
