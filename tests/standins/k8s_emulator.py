"""An in-memory Kubernetes API server over HTTP for the kubernetes backend's tests: kmock's
KubernetesEmulator, made to behave like an API server where podbay relies on it (see
../shared/K8S.md for what kmock 0.8 lacks): discovery with trailing slashes, `watch=True`,
metadata (namespace from the URL, uid, resourceVersion, creationTimestamp), label and field
selectors on lists and watches, watches resumed from a resourceVersion and ended by
timeoutSeconds, 201 on create, a Status on delete, pod logs, PUT. Test code plays the
kubelet, the Job controller and Kueue through add_object / patch_object / delete_object,
which running watches see.

Nothing runs, schedules or garbage-collects here: that is the tests' part.
"""
import asyncio, base64, collections, contextlib, datetime, random, re, string, uuid  # noqa: E401
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import aiobus  # the event bus the emulator streams watches from

# 'group/version/plural' (core: 'v1/plural') -> (kind, namespaced, subresources)
RESOURCES: dict[str, tuple[str, bool, set[str]]] = {
    'v1/namespaces': ('Namespace', False, {'status'}),
    'v1/nodes': ('Node', False, {'status'}),
    'v1/pods': ('Pod', True, {'status', 'log'}),
    'v1/services': ('Service', True, {'status'}),
    'v1/persistentvolumeclaims': ('PersistentVolumeClaim', True, {'status'}),
    'v1/secrets': ('Secret', True, set()),
    'v1/events': ('Event', True, set()),
    'batch/v1/jobs': ('Job', True, {'status'}),
    'networking.k8s.io/v1/networkpolicies': ('NetworkPolicy', True, set()),
    'kueue.x-k8s.io/v1beta1/workloads': ('Workload', True, {'status'}),
    'storage.k8s.io/v1/storageclasses': ('StorageClass', False, set()),
    'rbac.authorization.k8s.io/v1/roles': ('Role', True, set()),
    'rbac.authorization.k8s.io/v1/rolebindings': ('RoleBinding', True, set()),
    'rbac.authorization.k8s.io/v1/clusterroles': ('ClusterRole', False, set()),
    'rbac.authorization.k8s.io/v1/clusterrolebindings': ('ClusterRoleBinding', False, set()),
    'authorization.k8s.io/v1/selfsubjectaccessreviews': ('SelfSubjectAccessReview', False, set()),
    'authorization.k8s.io/v1/subjectaccessreviews': ('SubjectAccessReview', False, set()),
}
ADMIN = 'system:admin'
VERBS = {'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'}
_TERM = re.compile(r'^(!?)([\w./-]+)(?:(==|=|!=)(.*)|\s+(in|notin)\s*\((.*)\))?$')


def selector_matches(selector: str | None, get: Any) -> bool:
    """Label/field selector: a=b, a==b, a!=b, a, !a, a in (x,y), a notin (x,y); comma = AND."""
    for term in filter(str.strip, re.split(r',(?![^(]*\))', selector or '')):
        if not (m := _TERM.match(term.strip())):
            raise kmock.KubernetesError(400, 'BadRequest', f'unable to parse selector: {selector!r}')
        neg, key, op, val, setop, vals = m.groups()
        have = get(key.strip())
        if not ((have == val.strip()) == (op != '!=') if op else (have is None) == bool(neg) if not setop
                else (have in {v.strip() for v in vals.split(',')}) == (setop == 'in')):
            return False
    return True


def fold_string_data(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret's stringData written into data (base64), as the API server stores it."""
    if obj.get('kind') == 'Secret' and obj.get('stringData'):
        obj['data'] = {**(obj.get('data') or {}),
                       **{k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop('stringData').items()}}
    return obj


def _field(obj: Any, path: str) -> str:
    for part in path.split('.'):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return '' if obj is None else str(obj)


def _verb(request: kmock.Request) -> str:
    method = str(request.method).upper().rsplit('.', 1)[-1]
    if method == 'GET':
        if request.params.get('watch', '').lower() in ('true', '1'):
            return 'watch'
        return 'get' if request.name else 'list'
    return {'POST': 'create', 'PUT': 'update', 'PATCH': 'patch',
            'DELETE': 'delete' if request.name else 'deletecollection'}.get(method, method.lower())


@attrs.define
class Rbac:
    """The API server's authentication by bearer token and its RBAC authorizer, over the
    Role, ClusterRole and their bindings stored in the emulator (as the chart and `podbay k8s
    manifests` make them). `tokens` maps a token to its user; a ServiceAccount's user is
    system:serviceaccount:<namespace>:<name>. system:admin may do anything (system:masters)."""

    tokens: dict[str, str]

    def user(self, authorization: str | None) -> str | None:
        scheme, _, token = (authorization or '').partition(' ')
        return self.tokens.get(token) if scheme.lower() == 'bearer' else None

    @staticmethod
    def _subject_is(subject: dict[str, Any], user: str, binding_ns: str | None = None) -> bool:
        kind, name = subject.get('kind'), subject.get('name')
        if kind == 'User':
            return name == user
        if kind == 'ServiceAccount':  # a RoleBinding's subject without one: the binding's namespace
            return user == f"system:serviceaccount:{subject.get('namespace') or binding_ns}:{name}"
        if kind == 'Group':
            sa = user.startswith('system:serviceaccount:')
            groups = {'system:authenticated'} | ({'system:serviceaccounts',
                                                   f"system:serviceaccounts:{user.split(':')[2]}"} if sa else set())
            return name in groups
        return False

    @staticmethod
    def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str, name: str | None) -> bool:
        def has(values: Any, value: str) -> bool:
            return '*' in (values or []) or value in (values or [])
        return (has(rule.get('apiGroups'), group) and has(rule.get('resources'), resource) and has(rule.get('verbs'), verb)
                and (not rule.get('resourceNames') or (name is not None and name in rule['resourceNames'])))

    def allows(self, emu: 'Emulator', user: str, verb: str, group: str, resource: str, namespace: str | None,
               name: str | None) -> bool:
        if user == ADMIN:
            return True
        roles = {(r['metadata'].get('namespace'), r['metadata']['name']): r
                 for r in emu.stored('rbac.authorization.k8s.io/v1/roles')}
        cluster_roles = {r['metadata']['name']: r for r in emu.stored('rbac.authorization.k8s.io/v1/clusterroles')}
        granted: list[dict[str, Any]] = []
        for b in emu.stored('rbac.authorization.k8s.io/v1/clusterrolebindings'):
            if any(self._subject_is(s, user) for s in b.get('subjects') or []):
                granted += (cluster_roles.get(b['roleRef']['name']) or {}).get('rules') or []
        if namespace is not None:
            for b in emu.stored('rbac.authorization.k8s.io/v1/rolebindings'):
                if b['metadata'].get('namespace') != namespace or not any(
                        self._subject_is(s, user, namespace) for s in b.get('subjects') or []):
                    continue
                ref = b['roleRef']
                role = cluster_roles.get(ref['name']) if ref['kind'] == 'ClusterRole' else roles.get((namespace, ref['name']))
                granted += (role or {}).get('rules') or []
        return any(self._rule_allows(rule, verb, group, resource, name) for rule in granted)

    @staticmethod
    def refusal(user: str, verb: str, group: str, resource: str, namespace: str | None) -> str:
        plural, _, sub = resource.partition('/')
        what = f'resource "{plural}"' + (f' subresource "{sub}"' if sub else '')
        where = f'in the namespace "{namespace}"' if namespace else 'at the cluster scope'
        return f'{plural} is forbidden: User "{user}" cannot {verb} {what} in API group "{group}" {where}'


# How many changes of each resource the emulated API server replays to a watch from an older
# resourceVersion; older ones are compacted away (etcd's compaction) and such a watch ends
# with 410 Gone, as on a real API server.
HISTORY = 2000


@attrs.mutable(weakref_slot=True)
class HistoryBus(aiobus.Bus):
    """kmock's event bus, also keeping the last changes, newest last, for watches that start
    from a resourceVersion (the API server's watch cache)."""

    history: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=HISTORY))
    compacted: int = 0

    async def put(self, *items: Any) -> None:
        for item in items:
            if item is None:
                continue
            rv = int(((item.get('object') or {}).get('metadata') or {}).get('resourceVersion') or 0)
            if len(self.history) == self.history.maxlen:
                self.compacted = self.history[0][0]
            self.history.append((rv, item))
        await super().put(*items)

    def compact(self) -> None:
        """Forget every change so far: a watch from an older resourceVersion is told 410."""
        if self.history:
            self.compacted = self.history[-1][0]
        self.history.clear()


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    # (namespace, pod) -> its log: text, or the file a stand-in kubelet writes it to
    pod_logs: dict[tuple[str, str], str | Path] = attrs.field(factory=dict)
    # Admission: (resource, namespace, object) -> a refusal's message, or None to admit.
    admit: Any = attrs.field(default=None)
    # Authentication and RBAC, as an API server with --authorization-mode=RBAC; None: anyone may do anything.
    rbac: Rbac | None = attrs.field(default=None)
    last_rv: int = attrs.field(default=0, init=False)
    closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = collections.defaultdict(HistoryBus)

    def compact(self) -> None:
        """etcd's compaction of every resource's history (a watch from before it gets 410)."""
        for bus in list(self._buses.values()):
            bus.compact()

    def next_rv(self) -> str:
        self.last_rv += 1
        return str(self.last_rv)

    def stamp(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        meta = obj.setdefault('metadata', {})
        if namespace and not meta.get('namespace'):
            meta['namespace'] = namespace
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
        meta.setdefault('uid', str(uuid.uuid4()))
        meta.setdefault('creationTimestamp', datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))
        meta['resourceVersion'] = self.next_rv()
        fold_string_data(obj)
        if obj.get('kind') == 'Pod':  # as the API server defaults a new pod (KubeSpawner reads it at once)
            obj['status'] = {'phase': 'Pending', 'qosClass': 'Burstable', **(obj.get('status') or {})}
        return obj

    def matches(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        """Namespace, name and selectors of a request, whatever the object's resourceVersion."""
        meta, params = obj.get('metadata') or {}, request.params
        return (request.namespace in (None, meta.get('namespace')) and request.name in (None, meta.get('name'))
                and selector_matches(params.get('labelSelector'), (meta.get('labels') or {}).get)
                and selector_matches(params.get('fieldSelector'), lambda path: _field(obj, path)))

    def visible(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        meta, params, rv = obj.get('metadata') or {}, request.params, request.params.get('resourceVersion', '')
        return (request.namespace in (None, meta.get('namespace')) and request.name in (None, meta.get('name'))
                and not (request.action == kmock.action.WATCH and rv.isdigit() and int(meta.get('resourceVersion') or 0) <= int(rv))
                and selector_matches(params.get('labelSelector'), (meta.get('labels') or {}).get)
                and selector_matches(params.get('fieldSelector'), lambda path: _field(obj, path)))

    async def _handle(self, request: kmock.Request) -> Any:
        if len(request.url.path) > 1 and request.url.path.endswith('/'):  # kubernetes_asyncio: GET /apis/, /api/v1/
            object.__setattr__(request, 'url', request.url.with_path(request.url.path.rstrip('/')))
        if self.rbac is not None:
            user = self.rbac.user(request.headers.get('Authorization'))
            if user is None:
                raise kmock.KubernetesError(401, 'Unauthorized', 'Unauthorized')
            path = request.url.path
            if request.resource is None and user != ADMIN and not (
                    path in ('/api', '/apis', '/version', '/healthz', '/readyz', '/livez')
                    or path.startswith(('/api/', '/apis/'))):
                # Non-resource URLs beyond discovery (system:discovery, system:public-info-viewer).
                raise kmock.KubernetesError(403, 'Forbidden', f'forbidden: User "{user}" cannot get path "{path}"')
            if request.resource is not None:
                group, plural = request.resource.group or '', request.resource.plural
                if plural in ('selfsubjectaccessreviews', 'subjectaccessreviews'):
                    # Anyone may ask about themselves (system:basic-user); about another user,
                    # only who may create subjectaccessreviews (the API server's delegated check).
                    spec = (request.data or {}).get('spec') or {}
                    subject = user
                    if plural == 'subjectaccessreviews':
                        if not self.rbac.allows(self, user, 'create', group, plural, None, None):
                            raise kmock.KubernetesError(403, 'Forbidden', self.rbac.refusal(
                                user, 'create', group, plural, None))
                        subject = spec.get('user', '')
                    attrs_ = spec.get('resourceAttributes') or {}
                    resource = attrs_.get('resource', '') + (f"/{attrs_['subresource']}" if attrs_.get('subresource') else '')
                    allowed = self.rbac.allows(self, subject, attrs_.get('verb', ''), attrs_.get('group', ''), resource,
                                               attrs_.get('namespace') or None, attrs_.get('name') or None)
                    return aiohttp.web.json_response(dict(request.data or {}, status={
                        'allowed': allowed, **({} if allowed else {'reason': ''})}), status=201)
                resource = plural + (f'/{request.subresource}' if request.subresource else '')
                verb = _verb(request)
                if not self.rbac.allows(self, user, verb, group, resource, request.namespace, request.name):
                    raise kmock.KubernetesError(403, 'Forbidden', self.rbac.refusal(user, verb, group, resource,
                                                                                     request.namespace))
        if request.resource is not None:
            if request.method == 'GET' and request.params.get('watch', '').lower() in ('true', '1'):
                object.__setattr__(request, 'action', kmock.action.WATCH)  # in place: keeps identity in emu.requests
            key = (request.resource, request.namespace, request.name)
            cur = self.objects[key] if request.name and key in self.objects and not self.objects[key].deleted else None
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                refused = self.admit and self.admit(str(request.resource.plural), request.namespace, request.data)
                if refused:
                    raise kmock.KubernetesError(403, 'Forbidden', refused)
                self.stamp(request.data, request.namespace)
            elif request.action == kmock.action.UPDATE and cur is not None:
                if isinstance(request.data, dict):  # merge & strategic patches: both as plain merge (lists replaced)
                    request.data.setdefault('metadata', {})['resourceVersion'] = self.next_rv()
                elif isinstance(request.data, list) and 'metadata' in cur:  # JSON patch
                    request.data.append({'op': 'add', 'path': '/metadata/resourceVersion', 'value': self.next_rv()})
            elif request.action == kmock.action.DELETE and cur is not None:
                cur['metadata'] = dict(cur.raw.get('metadata') or {}, resourceVersion=self.next_rv())
            elif request.method == 'PUT' and isinstance(request.data, dict):  # replace: whole object or /status
                if cur is None:
                    raise kmock.KubernetesObjectNotFoundError()
                new = dict(cur.raw, status=request.data.get('status')) if request.subresource else fold_string_data(dict(request.data))
                meta = cur.raw['metadata']
                new['metadata'] = {**meta, **(new.get('metadata') or {}), 'uid': meta.get('uid'), 'resourceVersion': self.next_rv()}
                await self._emit(request.resource, 'MODIFIED', cur, lambda: cur.create(new))
                return aiohttp.web.json_response(cur.raw)  # NB: PUT bypasses user reactions
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)  # CustomObjectsApi.create_* returns None unless 201
        return response

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        kind = self.resources[request.resource].kind
        return dict(result, items=[obj for obj in result['items'] if self.visible(request, obj)],
                    metadata={'resourceVersion': str(self.last_rv)}, kind=f'{kind}List' if kind else 'List',
                    apiVersion='/'.join(filter(None, [request.resource.group, request.resource.version])))

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # Re-implemented: the bus is marked under the lock together with the snapshot (no lost events);
        # honours labelSelector, fieldSelector, resourceVersion, timeoutSeconds, and close_watches().
        yield b''  # send the response headers now
        bus = self._buses[request.resource]
        rv = request.params.get('resourceVersion', '')
        expired = None
        async with self._lock:
            marker = await bus.mark()
            if rv.isdigit() and int(rv) > 0:
                # From a resourceVersion: every change since, deletions included (the API
                # server's watch cache), or 410 Gone where that history was compacted.
                if int(rv) < bus.compacted:
                    expired = f'too old resource version: {rv} ({bus.compacted})'
                    events = []
                else:
                    events = [dict(event, replayed=True) for at, event in bus.history if at > int(rv)]
            else:  # "" or "0": the current state as ADDED events, then changes
                events = [{'type': 'ADDED', 'object': obj.raw} for (res, _, _), obj in self.objects.items()
                          if res == request.resource and not obj.deleted]
        if expired:  # told outside the lock: a client that stops reading holds nothing up
            await bus.unmark(marker)
            yield {'type': 'ERROR', 'object': {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                                               'reason': 'Expired', 'code': 410, 'message': expired}}
            return
        loop, timeout = asyncio.get_running_loop(), request.params.get('timeoutSeconds')
        deadline = loop.time() + float(timeout) if timeout else None
        stream = aiter(bus.stream(since=marker))
        try:
            while not self.closing:
                if not events:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    events.append(await asyncio.wait_for(anext(stream), left))
                event = events.pop(0)
                if event is not None and event.pop('replayed', False):
                    if self.matches(request, event['object']):
                        yield event
                elif event is not None and self.visible(request, event['object']):
                    yield event
        except asyncio.TimeoutError:
            pass  # server-side timeoutSeconds: end the stream cleanly
        finally:
            await stream.aclose()
            await bus.unmark(marker)

    async def close_watches(self) -> None:  # else Server exit hangs (>100 s) while a client holds a watch open
        self.closing = True
        for bus in list(self._buses.values()):
            await bus.put(None)

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = await super()._serve_fetch(request)  # 404 if the pod is absent
        if request.subresource == 'log':  # kmock alone returns the pod JSON for .../pods/x/log
            log = self.pod_logs.get((request.namespace, request.name), '')
            if isinstance(log, Path):
                return log.read_bytes() if log.exists() else b''
            return log.encode()  # bytes = raw body
        return obj

    async def _serve_delete(self, request: kmock.Request) -> Any:
        obj, res = await super()._serve_delete(request), request.resource
        if res.plural == 'pods' or not self.objects[res, request.namespace, request.name].deleted:
            return obj  # pods & finalizer-blocked objects: the object itself (as real K8s does)
        return {'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Success', 'details': {
            'name': request.name, 'group': res.group, 'kind': res.plural, 'uid': obj.get('metadata', {}).get('uid')}}

    # --- direct (non-HTTP) access for test code that plays the kubelet/controllers; watchers see it ---
    async def _emit(self, res: Any, etype: str, obj: Any, change: Any) -> dict[str, Any]:
        async with self._lock:
            change()
            raw = obj.last.raw if obj.deleted else obj.raw
            await self._buses[kmock.resource(res)].put({'type': etype, 'object': raw})
        return raw

    async def add_object(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = self.stamp(dict(obj, metadata=dict(obj.get('metadata') or {})))
        key = (kmock.resource(resource), obj['metadata'].get('namespace'), obj['metadata']['name'])
        if key in self.objects and not self.objects[key].deleted:
            raise KeyError(f'already exists: {key}')
        if key not in self.objects:
            self.objects[key] = []  # an empty history, i.e. "deleted"
        return await self._emit(resource, 'ADDED', self.objects[key], lambda: self.objects[key].create(obj))

    def stored(self, resource: str) -> list[dict[str, Any]]:
        """Every live object of a resource ('group/version/plural', core: 'v1/plural')."""
        key = kmock.resource(resource)
        return [o.raw for (res, _, _), o in list(self.objects.items()) if res == key and not o.deleted]

    def get_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        return None if key not in self.objects or self.objects[key].deleted else self.objects[key].raw

    async def patch_object(self, resource: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self.objects[resource, namespace, name]  # KeyError if it never existed
        if obj.deleted:
            raise KeyError(f'deleted: {resource} {namespace}/{name}')
        patch = dict(patch, metadata=dict(patch.get('metadata') or {}, resourceVersion=self.next_rv()))
        return await self._emit(resource, 'MODIFIED', obj, lambda: obj.patch(patch))  # merge; None deletes; lists replaced

    async def delete_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects[resource, namespace, name]
        obj['metadata'] = dict(obj.raw.get('metadata') or {}, resourceVersion=self.next_rv())
        return await self._emit(resource, 'DELETED', obj, obj.delete)  # soft-delete: history is kept


@contextlib.asynccontextmanager
async def emulated_cluster(resources: dict[str, tuple[str, bool, set[str]]] = RESOURCES) -> AsyncIterator[tuple[str, Emulator]]:
    """Serve an Emulator on a free 127.0.0.1 port for the duration of the block; yield (url, emulator)."""
    async with Emulator() as emu, kmock.Server(emu) as server:
        for key, (kind, namespaced, subresources) in resources.items():
            emu.resources[key] = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced,
                                                    verbs=VERBS, subresources=subresources)
        try:
            yield str(server.url), emu
        finally:
            await emu.close_watches()
