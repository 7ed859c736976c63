"""The cluster's Nodes and non-terminated Pods, kept current by list-then-watch (as
KubeSpawner's reflectors keep its pods), so that the capacity source never lists the
cluster per request.

Every namespace's pods count: a pod of another team's namespace uses the same GPUs.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from .api import read_json

log = logging.getLogger("podbay.k8s.watch")

TERMINATED = ("Succeeded", "Failed")


class ClusterView:
    """What the watches saw. Readers (the form, the REST service's threads) take a consistent
    pair of lists; the watches replace whole objects under a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, dict]] = {"node": {}, "pod": {}}
        self.ready = threading.Event()
        # Bumped by every change: readers keep what they computed from it until it moves.
        self.version = 0

    def replace(self, kind: str, objects: dict[str, dict]) -> None:
        with self._lock:
            self._objects[kind] = dict(objects)
            self.version += 1

    def put(self, kind: str, key: str, obj: dict | None) -> None:
        with self._lock:
            self.version += 1
            if obj is None:
                self._objects[kind].pop(key, None)
            else:
                self._objects[kind][key] = obj

    def __call__(self) -> tuple[list[dict], list[dict]]:
        with self._lock:
            return list(self._objects["node"].values()), list(self._objects["pod"].values())


def _key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name')}"


def _counts(kind: str, obj: dict) -> bool:
    """Whether an object matters to capacity: every node; pods that have not ended."""
    return kind == "node" or (obj.get("status") or {}).get("phase") not in TERMINATED


class ClusterWatch:
    """List, then watch from the list's resourceVersion; on any error list again (a watch
    that expired, an API server that restarted) after a short, growing pause."""

    def __init__(self, view: ClusterView, core_api, *, watch_timeout: int = 300, request_timeout: float = 330):
        self.view, self.api = view, core_api
        self.watch_timeout, self.request_timeout = watch_timeout, request_timeout
        self._lists = {"node": core_api.list_node, "pod": core_api.list_pod_for_all_namespaces}
        self._listed: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(*(self._reflect(kind) for kind in self._lists))

    async def _reflect(self, kind: str) -> None:
        from kubernetes_asyncio import watch

        pause = 0.5
        while True:
            try:
                body = await read_json(self._lists[kind], _request_timeout=self.request_timeout)
                self.view.replace(kind, {_key(o): o for o in body.get("items") or [] if _counts(kind, o)})
                self._listed.add(kind)
                if self._listed == set(self._lists):
                    self.view.ready.set()
                pause = 0.5
                rv = (body.get("metadata") or {}).get("resourceVersion")
                async with watch.Watch() as w:
                    async for event in w.stream(self._lists[kind], resource_version=rv,
                                                timeout_seconds=self.watch_timeout,
                                                _request_timeout=self.request_timeout):
                        obj = event["raw_object"]
                        if event["type"] == "ERROR":
                            raise RuntimeError(f"watch of {kind}s: {obj.get('message', obj)}")
                        gone = event["type"] == "DELETED" or not _counts(kind, obj)
                        self.view.put(kind, _key(obj), None if gone else obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the API server went away, a watch expired: list again
                log.warning("watch of %ss interrupted (%s); listing again in %.1f s", kind, e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30)
