"""The live service as N replicas on Ray Serve, sharing one edit registry and one artifact store.

Two deployments make one application:

- ``Editor``, one replica: the leader, a ``LiveService`` that applies every add and rollback (the only process that
  edits, so the registry's changes stay in one order). It has no HTTP route of its own.
- ``Replica``, N replicas: the HTTP ingress (the same FastAPI app as ``genrecedit serve``, API key included). Each is
  a follower: it answers ``/recommend``, ``/items/{id}``, ``/jobs/{id}``, ``/edits`` from its own snapshot and the
  shared registry, forwards ``POST /items``, ``POST /feedback`` and ``DELETE /edits/{id}`` to the Editor over a
  Serve handle, and loads
  every new ``model_version`` from the registry within ``sync_interval_s`` of its commit (``LiveService.sync``).

The replicas share the run directory and the service's state directory (the artifact store): one machine, or a
shared filesystem across machines. The registry is SQLite in the state directory on one machine, PostgreSQL
(``ServiceConfig.registry_url``) across machines. Requests are routed by Ray Serve's proxy.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from genrecedit.serving.api import create_app
from genrecedit.serving.service import Interaction, LiveService, NewItem, ServiceConfig

APP_NAME = "genrecedit"


class RemoteLeader:
    """``service.Leader`` over a Serve handle to the Editor: each call blocks for the Editor's answer, and the
    Editor's own exception (an invalid batch, an unknown job, a failed edit) is raised as it was raised there."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def _call(self, method: str, *args):
        try:
            return getattr(self.handle, method).remote(*args).result()
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def submit_add(self, items: list[NewItem], idempotency_key: str | None = None) -> tuple[dict, bool]:
        return self._call("submit_add", items, idempotency_key)

    def wait_job(self, job_id: str, timeout: float | None = None) -> dict:
        return self._call("wait_job", job_id, timeout)

    def add_items(self, items: list[NewItem]) -> dict:
        return self._call("add_items", items)

    def add_feedback(self, interactions: list[Interaction]) -> dict:
        return self._call("add_feedback", interactions)

    def roll_back(self, batch_id: str) -> dict:
        return self._call("roll_back", batch_id)


def _replica_name(role: str) -> str:
    try:
        return f"{role}-{serve.get_replica_context().replica_id.unique_id}"
    except Exception:  # noqa: BLE001 - outside a replica (a direct test): the process id names it
        return f"{role}-{os.getpid()}"


# tqdm reads TQDM_DISABLE when it is imported, before a replica's constructor runs: the worker process gets it
_ACTOR_OPTIONS = {"num_cpus": 0, "runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}}


@serve.deployment(name="Editor", num_replicas=1, ray_actor_options=_ACTOR_OPTIONS)
class Editor:
    """The leader: the one ``LiveService`` that edits. Its methods block on its edit worker, so each runs in a
    thread and the Editor keeps taking calls (a job's status, another add) meanwhile."""

    def __init__(self, run_dir: str, cfg: ServiceConfig, overrides: list[str]) -> None:
        self.service = LiveService.open(Path(run_dir), cfg, overrides, name=_replica_name("editor"))

    async def submit_add(self, items: list[NewItem], idempotency_key: str | None) -> tuple[dict, bool]:
        return await asyncio.to_thread(self.service.submit_add, items, idempotency_key)

    async def wait_job(self, job_id: str, timeout: float | None) -> dict:
        return await asyncio.to_thread(self.service.wait_job, job_id, timeout)

    async def add_items(self, items: list[NewItem]) -> dict:
        return await asyncio.to_thread(self.service.add_items, items)

    async def add_feedback(self, interactions: list[Interaction]) -> dict:
        return await asyncio.to_thread(self.service.add_feedback, interactions)

    async def roll_back(self, batch_id: str) -> dict:
        return await asyncio.to_thread(self.service.roll_back, batch_id)

    def health(self) -> dict:
        return self.service.health()


@serve.deployment(name="Replica", ray_actor_options=_ACTOR_OPTIONS)
@serve.ingress()
class Replica:
    """A follower behind the HTTP proxy (``genrecedit serve``'s API)."""

    def __init__(self, run_dir: str, cfg: ServiceConfig, overrides: list[str], editor: DeploymentHandle) -> None:
        self.service = LiveService.open(Path(run_dir), cfg, overrides, leader=RemoteLeader(editor),
                                        name=_replica_name("replica"))

    def __serve_build_asgi_app__(self):
        return create_app(self.service)


def replicated_app(run_dir: Path, cfg: ServiceConfig, replicas: int, overrides: list[str] | None = None):
    """The Serve application: one Editor and ``replicas`` followers over the run at ``run_dir``."""
    if replicas < 1:
        raise ValueError(f"replicas must be ≥ 1, got {replicas}")
    cfg = cfg.resolved(Path(run_dir).resolve())  # every replica reads the same absolute paths
    overrides = list(overrides or [])
    editor = Editor.bind(str(Path(run_dir).resolve()), cfg, overrides)
    return Replica.options(num_replicas=replicas).bind(str(Path(run_dir).resolve()), cfg, overrides, editor)


def serve_replicas(run_dir: Path, cfg: ServiceConfig, replicas: int, host: str = "127.0.0.1", port: int = 8000,
                   overrides: list[str] | None = None, address: str | None = None) -> None:
    """Start (or join, given ``address``) a Ray cluster, deploy the application on ``host:port`` and serve until
    interrupted."""
    import ray

    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(replicated_app(run_dir, cfg, replicas, overrides), name=APP_NAME, route_prefix="/", blocking=True)
