"""gRPC ⇄ domain for the vendedor service."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as pb
from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceServicer
from services.common.errors import InvalidInput, NotFound
from services.common.grpc_server import BackgroundTask, client_metadata
from services.vendedor.domain import Vendedor, merge_kommo_users
from services.vendedor.settings import VendedorSettings
from services.vendedor.store import SYNC_LOCK, SYNC_LOCK_SECONDS, SYNCED_AT, VENDEDORES

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_SYNC_DEADLINE_SECONDS = 60.0
# At start the gateway may still be coming up: retry soon, then back off.
_FIRST_RETRY_SECONDS = 1.0
_MAX_RETRY_SECONDS = 60.0
# An unknown user id triggers a sync, but not more often than this.
_RESYNC_ON_MISS_SECONDS = 30.0


def to_pb(v: Vendedor) -> pb.Vendedor:
    return pb.Vendedor(
        id=v.id,
        name=v.name,
        email=v.email,
        phone=v.phone,
        areas=v.areas,
        source=v.source,
        active=v.active,
        is_admin=v.is_admin,
    )


class Vendedores:
    def __init__(self, redis: aioredis.Redis, gateway: KommoGatewayAsyncStub) -> None:
        self._redis = redis
        self._gateway = gateway
        self._sync_lock = asyncio.Lock()

    async def all(self) -> dict[int, Vendedor]:
        raw = await self._redis.hgetall(VENDEDORES)
        return {int(k): Vendedor(**json.loads(v)) for k, v in raw.items()}

    async def get(self, vendedor_id: int) -> Vendedor | None:
        found = await self._lookup(vendedor_id)
        if found is None and time.time() - await self.synced_at() > _RESYNC_ON_MISS_SECONDS:
            # A user new in Kommo (or a first lookup before the first sync): sync now
            # rather than answer "unknown" until the periodic sync comes round.
            async with self._sync_lock:
                if time.time() - await self.synced_at() > _RESYNC_ON_MISS_SECONDS:
                    await self.sync()
            found = await self._lookup(vendedor_id)
        return found

    async def _lookup(self, vendedor_id: int) -> Vendedor | None:
        raw = await self._redis.hget(VENDEDORES, str(vendedor_id))
        return Vendedor(**json.loads(raw)) if raw else None

    async def synced_at(self) -> float:
        return float(await self._redis.get(SYNCED_AT) or 0)

    async def sync(self) -> pb.SyncReport:
        response = await self._gateway.ListUsers(
            gw.ListUsersRequest(), timeout=_SYNC_DEADLINE_SECONDS, metadata=client_metadata()
        )
        users = [
            Vendedor(id=u.id, name=u.name, email=u.email, active=u.is_active, is_admin=u.is_admin)
            for u in response.users
        ]
        result = merge_kommo_users(await self.all(), users)
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            if result.vendedores:
                pipe.hset(
                    VENDEDORES,
                    mapping={str(k): json.dumps(v.to_dict()) for k, v in result.vendedores.items()},
                )
            pipe.set(SYNCED_AT, now)
            await pipe.execute()
        log.info(
            "vendedores synced",
            extra={
                "added": result.added,
                "updated": result.updated,
                "deactivated": result.deactivated,
            },
        )
        return pb.SyncReport(
            added=result.added,
            updated=result.updated,
            deactivated=result.deactivated,
            total=len(result.vendedores),
            synced_at=now,
        )


class VendedorServicer(VendedorServiceServicer):
    def __init__(self, vendedores: Vendedores, gateway: KommoGatewayAsyncStub) -> None:
        self._vendedores = vendedores
        self._gateway = gateway

    async def GetVendedor(self, request: pb.GetVendedorRequest, context: Context) -> pb.Vendedor:
        found = await self._vendedores.get(request.vendedor_id)
        if found is None:
            raise NotFound(f"vendedor {request.vendedor_id} not found")
        return to_pb(found)

    async def GetVendedorForLead(
        self, request: pb.GetVendedorForLeadRequest, context: Context
    ) -> pb.Vendedor:
        if request.lead_id <= 0:
            raise InvalidInput("lead_id must be a positive integer")
        lead = await self._gateway.GetLead(
            gw.GetLeadRequest(lead_id=request.lead_id), metadata=client_metadata()
        )
        if not lead.responsible_user_id:
            raise NotFound(f"lead {request.lead_id} has no responsible user")
        found = await self._vendedores.get(lead.responsible_user_id)
        if found is None:
            raise NotFound(
                f"the responsible user {lead.responsible_user_id} of lead {request.lead_id} "
                "is not a known vendedor (sync the vendedores?)"
            )
        return to_pb(found)

    async def ListVendedores(
        self, request: pb.ListVendedoresRequest, context: Context
    ) -> pb.ListVendedoresResponse:
        everyone = await self._vendedores.all()
        chosen = [v for v in everyone.values() if not request.source or v.source == request.source]
        return pb.ListVendedoresResponse(
            vendedores=[to_pb(v) for v in sorted(chosen, key=lambda v: v.id)],
            synced_at=await self._vendedores.synced_at(),
        )

    async def SyncVendedores(
        self, request: pb.SyncVendedoresRequest, context: Context
    ) -> pb.SyncReport:
        return await self._vendedores.sync()


class PeriodicSync(BackgroundTask):
    """Syncs at start and then every interval; one replica at a time."""

    name = "vendedor-sync"

    def __init__(self, vendedores: Vendedores, redis: aioredis.Redis, settings: VendedorSettings):
        self._vendedores = vendedores
        self._redis = redis
        self._interval = settings.vendedor_sync_interval_seconds

    async def run(self, stopping: asyncio.Event) -> None:
        retry = _FIRST_RETRY_SECONDS
        while not stopping.is_set():
            wait = self._interval
            try:
                due = time.time() - await self._vendedores.synced_at() >= self._interval
                if due and await self._redis.set(SYNC_LOCK, "1", nx=True, ex=SYNC_LOCK_SECONDS):
                    try:
                        await self._vendedores.sync()
                    finally:
                        await self._redis.delete(SYNC_LOCK)
                retry = _FIRST_RETRY_SECONDS
            except (grpc.aio.AioRpcError, RedisError) as exc:
                log.warning("vendedor sync failed, retrying in %.0f s: %s", retry, exc)
                wait = retry
                retry = min(retry * 2, _MAX_RETRY_SECONDS)
            if wait <= 0:
                return
            try:
                await asyncio.wait_for(stopping.wait(), timeout=wait)
            except TimeoutError:
                pass
