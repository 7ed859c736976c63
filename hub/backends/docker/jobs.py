"""Jobs as containers on the Docker engine of one GPU server.

A job is a container of its catalog image with the user's home volume at /home/jovyan,
its catalog volumes and a device request for exactly the GPUs the quota book claimed. The
container is labelled with the job's id and the install's name prefix: that, not memory,
is how the backend finds its jobs after a restart. When a container has ended, its output
and exit code are kept in the job's folder and the container is removed; a cancelled job
is stopped (SIGTERM, then SIGKILL after the grace period) and removed the same way.

While a job runs, its output is streamed once from the engine into a file in its folder
(a spool), where every reader seeks to its offset: a follower polling a job that has
written gigabytes does not make the engine send them all again on each poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from docker.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from ...config import PodbayConfig
from ...environment import gpu_env
from ...training import (
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    TrainingBackend,
    offset_of,
    read_from,
    read_int,
)
from .images import DockerUnavailable
from .network import DockerNetworkError, ensure_network, keyed_digest, restricted_host_config

log = logging.getLogger("podbay.training.docker")
HOME = "/home/jovyan"


class DockerBackend(TrainingBackend):
    name = "docker"
    # Homes are Docker volumes: podbay cannot look into them from the service.
    host_homes = False

    def __init__(self, cfg: PodbayConfig, jobs_dir: Path, client=None):
        self.cfg = cfg
        self.settings = cfg.docker
        self.jobs_dir = Path(jobs_dir)
        self._client = client
        self._spools: dict[int, _Spool] = {}
        self._spools_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            from .images import docker_client
            try:
                self._client = docker_client()
            except DockerUnavailable as e:
                raise BackendUnavailable(str(e)) from None
        return self._client

    def container_name(self, job_id: int) -> str:
        # The job's id is there for whoever reads `docker ps`; the hash keeps other
        # workspaces from finding it by name (network.opaque_name).
        return f"{self.settings.name_prefix}-job-{job_id}-{keyed_digest('job', job_id)}"

    def mount_source(self, volume, path: Path | None) -> str:
        return self.settings.named_volumes.get(volume.name) or str(path)

    def home_of(self, user: str) -> Path:
        # Workdirs and volume targets are paths inside the container, under the home volume.
        return Path(HOME)

    async def submit(self, job: JobSpec) -> dict:
        try:
            return await asyncio.to_thread(self._submit, job)
        except RequestsConnectionError as e:
            self._client = None
            raise BackendUnavailable(f"Docker is not reachable ({e}); the job starts when it is back") from None

    def _submit(self, job: JobSpec) -> dict:
        api = self.client.api
        image = self.cfg.image(job.image)
        ref_image = image.image if image else job.image
        home = self.settings.home_volume(job.user, job.workspace)
        binds = {home: {"bind": HOME, "mode": "rw"}}
        for source, target, read_only in job.volumes:
            binds[source] = {"bind": target, "mode": "ro" if read_only else "rw"}
        devices = list(dict.fromkeys(job.devices))
        if self.settings.job_network_name not in ("none", "host"):
            # Its own network namespace on the workspaces' network, made again if removed.
            try:
                ensure_network(api, self.settings)
            except DockerNetworkError as e:
                raise BackendUnavailable(f"the job's network is not usable: {e}") from None
        host_config = api.create_host_config(
            binds=binds, network_mode=self.settings.job_network_name, **restricted_host_config(),
            device_requests=[{"driver": self.settings.gpu_driver, "device_ids": devices,
                              "capabilities": [["gpu"]]}] if devices else None)
        env = {**gpu_env(devices), **job.env}  # job.env has them already, when built by the manager
        name = self.container_name(job.id)
        self._remove(name)  # one left by a submit that failed half-way
        # Job ids start again after the database is reset: an old job's exit code and
        # output in this folder would otherwise be taken for the new job's.
        for stale in ("exit_code", "output.log", _Spool.FILE):
            (self._dir({"job_id": job.id}) / stale).unlink(missing_ok=True)
        container = api.create_container(
            image=ref_image, command=list(job.command), name=name, environment=env,
            working_dir=job.workdir, host_config=host_config,
            labels={"podbay.job": str(job.id), "podbay.prefix": self.settings.name_prefix,
                    "podbay.user": job.user, "podbay.image": job.image})
        try:
            api.start(container["Id"])
        except APIError:
            self._remove(container["Id"])
            raise
        return {"container": container["Id"], "name": name}

    def _dir(self, ref: dict) -> Path:
        return self.jobs_dir / str(ref["job_id"])

    def _find(self, ref: dict) -> dict | None:
        """The job's container, by id or, for a job interrupted while starting, by name."""
        for key in (ref.get("container"), self.container_name(ref["job_id"])):
            if not key:
                continue
            try:
                return self.client.api.inspect_container(key)
            except NotFound:
                continue
        return None

    def _archive(self, container: dict, ref: dict) -> int:
        """Keep an ended container's output and exit code in the job folder, then remove it."""
        d = self._dir(ref)
        d.mkdir(parents=True, exist_ok=True)
        code = int(container["State"]["ExitCode"])
        (d / "output.log").write_bytes(self.client.api.logs(container["Id"], stdout=True, stderr=True))
        (d / "exit_code").write_text(str(code))
        self._remove(container["Id"])
        with self._spools_lock:
            self._spools.pop(ref["job_id"], None)
        (d / _Spool.FILE).unlink(missing_ok=True)
        return code

    def _remove(self, key: str) -> None:
        try:
            self.client.api.remove_container(key, force=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # already being removed
                raise

    def _status(self, ref: dict) -> BackendStatus:
        code = read_int(self._dir(ref) / "exit_code")
        if code is not None:
            return BackendStatus("exited", code)
        container = self._find(ref)
        if container is None:
            return BackendStatus("lost", message="the job's container is gone and left no exit code")
        state = container["State"]
        if state["Running"] or state["Status"] in ("created", "restarting"):
            return BackendStatus("running")
        return BackendStatus("exited", self._archive(container, ref))

    async def status(self, ref: dict) -> BackendStatus:
        return await asyncio.to_thread(self._status, ref)

    async def cancel(self, ref: dict) -> None:
        def stop():
            container = self._find(ref)
            if container is None:
                return
            if container["State"]["Running"]:
                self.client.api.stop(container["Id"], timeout=self.settings.stop_grace)
            self._archive(self.client.api.inspect_container(container["Id"]), ref)

        await asyncio.to_thread(stop)

    async def read_logs(self, ref: dict, cursor: str | None = None) -> tuple[bytes, str | None]:
        offset = offset_of(cursor)
        # Off the event loop: the engine may be asked for the output.
        data = await asyncio.to_thread(self.output_from, ref, offset)
        return data, str(offset + len(data))

    def output_from(self, ref: dict, offset: int = 0) -> bytes:
        """The job's output from a byte offset on (what read_logs reads, synchronously)."""
        if "job_id" not in ref:
            return b""
        if not (self._dir(ref) / "exit_code").exists():
            try:
                source = self._live_output(ref, offset)
            except (BackendUnavailable, RequestsConnectionError):
                source = None  # the engine is away: what was archived or spooled is all there is
            if isinstance(source, bytes):
                return source
            if source is not None:
                return read_from(source, offset)
        return read_from(self._dir(ref) / "output.log", offset)

    def _live_output(self, ref: dict, offset: int) -> Path | bytes | None:
        """Where a job that has not been archived has its output: its spool, started here
        for a running container; the container's log itself for one that ended before any
        spool was started (after a service restart); None when there is no container."""
        job_id = ref["job_id"]
        with self._spools_lock:
            spool = self._spools.get(job_id)
            if spool is not None and spool.streaming:
                return spool.path
            container = self._find(ref)
            if container is None:
                return spool.path if spool else None
            if container["State"]["Running"]:
                # A new stream starts at the container's first byte: the spool is always a
                # prefix of the output, so readers' offsets stay good across a restart of it.
                spool = self._spools[job_id] = _Spool(self.client.api, container["Id"], self._dir(ref) / _Spool.FILE)
                return spool.path
            if spool is not None:
                return spool.path  # it streamed until the container ended; archived soon
        try:
            return self.client.api.logs(container["Id"], stdout=True, stderr=True)[offset:]
        except NotFound:
            return None  # archived meanwhile

    async def reconcile(self, refs: dict[int, dict]) -> dict[int, BackendStatus]:
        """Statuses of the jobs the service believed active; containers of this install
        that belong to no such job (their job ended or was never recorded) are removed, so
        no container holds GPUs the quota book thinks free."""
        statuses = {job_id: await self.status({**ref, "job_id": job_id}) for job_id, ref in refs.items()}

        def sweep():
            found = self.client.api.containers(
                all=True, filters={"label": [f"podbay.prefix={self.settings.name_prefix}", "podbay.job"]})
            for c in found:
                job_id = int(c["Labels"]["podbay.job"])
                if job_id not in refs:
                    log.warning("removing container %s of job %s, which is not active", c["Id"][:12], job_id)
                    self._remove(c["Id"])

        await asyncio.to_thread(sweep)
        return statuses


class _Spool:
    """One running container's output, streamed from the engine into a file as it comes."""

    FILE = "output.live"

    def __init__(self, api, container_id: str, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        # A daemon thread: the stream ends with the container, and must not hold up the
        # service's shutdown while the job runs on.
        self._thread = threading.Thread(target=self._run, args=(api, container_id),
                                        name=f"spool-{container_id[:12]}", daemon=True)
        self._thread.start()

    @property
    def streaming(self) -> bool:
        return self._thread.is_alive()

    def _run(self, api, container_id: str) -> None:
        try:
            with self.path.open("ab", buffering=0) as f:
                for chunk in api.logs(container_id, stdout=True, stderr=True, stream=True, follow=True):
                    f.write(chunk)
        except Exception as e:  # noqa: BLE001 - the container or the engine went away
            log.info("output stream of %s ended: %s", container_id[:12], e)
