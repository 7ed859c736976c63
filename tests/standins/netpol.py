"""NetworkPolicy as the Kubernetes API documents its semantics (networking.k8s.io/v1), for
evaluating flows over real manifests (`helm template`'s output and podbay's): which pod or
address may open a connection to which, on which port. No CNI runs here; this is what a
conforming one enforces.

- A pod is isolated for ingress (egress) when a policy of its namespace selects it and has
  Ingress (Egress) in its policyTypes (default: Ingress, plus Egress where it has egress
  rules); an isolated pod admits only what some selecting policy's rules allow.
- A flow happens when the source's egress and the destination's ingress both allow it.
- Peers: podSelector (the policy's namespace unless namespaceSelector says which),
  namespaceSelector, both (AND), ipBlock (cidr minus except) matched on the peer's IP.
- Ports: none listed is every port; a named port is the destination container's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Peer:
    """A pod (labels, namespace, IP, named ports), or an address outside the cluster (no
    namespace)."""

    ip: str
    labels: dict = field(default_factory=dict, hash=False)
    namespace: str | None = None
    ports: dict = field(default_factory=dict, hash=False)


def selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else []))


def _peer_matches(peer: dict, policy_ns: str, other: Peer) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return (address in ipaddress.ip_network(block["cidr"])
                and not any(address in ipaddress.ip_network(e) for e in block.get("except") or []))
    if other.namespace is None:
        return False  # pod and namespace selectors match pods only
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace}):
            return False
    elif other.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], other.labels)


def _port_matches(ports: list[dict] | None, port: int, protocol: str, dst: Peer) -> bool:
    if not ports:
        return True
    for p in ports:
        if (p.get("protocol") or "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        number = dst.ports.get(want) if isinstance(want, str) else want
        if number is not None and (number == port or number <= port <= (p.get("endPort") or number)):
            return True
    return False


def _side(policies: list[dict], pod: Peer, kind: str, other: Peer, port: int, protocol: str, dst: Peer) -> bool:
    if pod.namespace is None:
        return True  # outside the cluster: no policy of ours
    selecting = [p for p in policies if p["metadata"].get("namespace") == pod.namespace
                 and selects(p["spec"].get("podSelector"), pod.labels) and kind in _types(p)]
    if not selecting:
        return True
    rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers)) \
                    and _port_matches(rule.get("ports"), port, protocol, dst):
                return True
    return False


def allowed(policies: list[dict], src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether `src` may connect to `dst` on `port` under these policies. A pod cannot block
    connections to itself (through its own Service too), as the API's documentation says."""
    if src == dst and src.namespace is not None:
        return True
    return (_side(policies, src, "Egress", dst, port, protocol, dst)
            and _side(policies, dst, "Ingress", src, port, protocol, dst))
