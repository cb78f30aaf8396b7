"""gRPC ⇄ domain for the vendedor service."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from redis.exceptions import RedisError

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as pb
from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceServicer
from services.common.errors import InvalidInput, NotFound
from services.common.grpc_server import BackgroundTask, client_metadata
from services.vendedor import domain
from services.vendedor.domain import Vendedor, merge_kommo_users
from services.vendedor.settings import VendedorSettings
from services.vendedor.store import SYNC_LOCK, SYNC_LOCK_SECONDS, VendedorStore

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


def to_pb(v: Vendedor, matched_by: str = "") -> pb.Vendedor:
    return pb.Vendedor(
        id=v.id,
        name=v.name,
        email=v.email,
        phone=v.phone,
        areas=v.areas,
        source=v.source,
        active=v.active,
        is_admin=v.is_admin,
        matched_by=matched_by,
    )


class Vendedores:
    """The vendedores as a whole: sync from Kommo, lookups, custom ones."""

    def __init__(
        self, store: VendedorStore, gateway: KommoGatewayAsyncStub, settings: VendedorSettings
    ) -> None:
        self.store = store
        self._gateway = gateway
        self._sync_lock = asyncio.Lock()
        self._fallback, self._default_id = domain.fallback_policy(settings.vendedor_fallback)

    async def get(self, vendedor_id: int) -> Vendedor | None:
        found = await self.store.get(vendedor_id)
        synced_at, _ = await self.store.sync_state()
        if found is None and time.time() - synced_at > _RESYNC_ON_MISS_SECONDS:
            # A user new in Kommo (or a first lookup before the first sync): sync now
            # rather than answer "unknown" until the periodic sync comes round.
            async with self._sync_lock:
                synced_at, _ = await self.store.sync_state()
                if time.time() - synced_at > _RESYNC_ON_MISS_SECONDS:
                    try:
                        await self.sync()
                    except grpc.aio.AioRpcError as exc:
                        log.warning("sync on a miss failed: %s", exc.details())
            found = await self.store.get(vendedor_id)
        return found

    async def responsible(self, user_id: int, what: str) -> pb.Vendedor:
        """The active vendedor behind `user_id`, else the configured fallback."""
        found = await self.get(user_id) if user_id else None
        if found is not None and found.active:
            return to_pb(found, "responsible")
        if user_id:
            reason = f"the responsible user {user_id} of {what} is not an active vendedor"
        else:
            reason = f"{what} has no responsible user"
        if self._fallback == "default":
            default = await self.store.get(self._default_id)
            if default is not None and default.active:
                return to_pb(default, "fallback_default")
            raise NotFound(f"{reason}, and the default vendedor {self._default_id} is not active")
        if self._fallback == "round_robin":
            active = sorted(
                (v for v in domain.dynamic(list((await self.store.all()).values())) if v.active),
                key=lambda v: v.id,
            )
            if active:
                turn = await self.store.next_turn()
                return to_pb(active[turn % len(active)], "fallback_round_robin")
        raise NotFound(reason)

    async def sync(self) -> pb.SyncReport:
        try:
            response = await self._gateway.ListUsers(
                gw.ListUsersRequest(), timeout=_SYNC_DEADLINE_SECONDS, metadata=client_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            await self.store.sync_failed(f"{exc.code().name}: {exc.details()}")
            raise
        users = [
            Vendedor(id=u.id, name=u.name, email=u.email, active=u.is_active, is_admin=u.is_admin)
            for u in response.users
        ]
        result = merge_kommo_users(await self.store.all(), users)
        synced_at = await self.store.synced(result.vendedores)
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
            synced_at=synced_at,
        )

    async def seed_samples(self) -> None:
        existing = {v.email for v in (await self.store.all()).values()}
        for name, email, areas in domain.SAMPLES:
            if email not in existing:
                sample = domain.new_custom(
                    await self.store.next_custom_id(), name, email, "", areas, True
                )
                await self.store.put(sample)
                log.info("sample vendedor added", extra={"vendedor_id": sample.id})


class VendedorServicer(VendedorServiceServicer):
    def __init__(self, vendedores: Vendedores, gateway: KommoGatewayAsyncStub) -> None:
        self._vendedores = vendedores
        self._store = vendedores.store
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
        return await self._vendedores.responsible(
            lead.responsible_user_id, f"lead {request.lead_id}"
        )

    async def GetVendedorForContact(
        self, request: pb.GetVendedorForContactRequest, context: Context
    ) -> pb.Vendedor:
        if request.contact_id <= 0:
            raise InvalidInput("contact_id must be a positive integer")
        contact = await self._gateway.GetContact(
            gw.GetContactRequest(contact_id=request.contact_id), metadata=client_metadata()
        )
        return await self._vendedores.responsible(
            contact.responsible_user_id, f"contact {request.contact_id}"
        )

    async def ListVendedores(
        self, request: pb.ListVendedoresRequest, context: Context
    ) -> pb.ListVendedoresResponse:
        everyone = list((await self._store.all()).values())
        if request.source == "dynamic":
            chosen = domain.dynamic(everyone)
        elif request.source in ("kommo", "custom"):
            chosen = [v for v in everyone if v.source == request.source]
        elif request.source == "":
            chosen = everyone
        else:
            raise InvalidInput("source must be '', 'kommo', 'custom' or 'dynamic'")
        if request.active_only:
            chosen = [v for v in chosen if v.active]
        synced_at, error = await self._store.sync_state()
        listed = [] if request.counts_only else sorted(chosen, key=lambda v: v.id)
        return pb.ListVendedoresResponse(
            vendedores=[to_pb(v) for v in listed],
            synced_at=synced_at,
            sync_error=error,
            total=len(chosen),
            active=sum(1 for v in chosen if v.active),
        )

    async def SyncVendedores(
        self, request: pb.SyncVendedoresRequest, context: Context
    ) -> pb.SyncReport:
        return await self._vendedores.sync()

    async def AddVendedor(self, request: pb.AddVendedorRequest, context: Context) -> pb.Vendedor:
        existing = [
            v
            for v in (await self._store.all()).values()
            if v.source == "custom" and request.email and v.email == request.email.strip().lower()
        ]
        if existing:
            raise InvalidInput(f"a custom vendedor with email {request.email} exists already")
        vendedor = domain.new_custom(
            0, request.name, request.email, request.phone, list(request.areas), request.active
        )
        vendedor = domain.replace_id(vendedor, await self._store.next_custom_id())
        await self._store.put(vendedor)
        return to_pb(vendedor)

    async def SetAreas(self, request: pb.SetAreasRequest, context: Context) -> pb.Vendedor:
        found = await self._store.get(request.vendedor_id)
        if found is None:
            raise NotFound(f"vendedor {request.vendedor_id} not found")
        updated = domain.with_areas(found, domain.normalize_areas(list(request.areas)))
        await self._store.put(updated)
        return to_pb(updated)


class PeriodicSync(BackgroundTask):
    """Syncs at start and then every interval; one replica at a time. While Kommo is
    down the lists keep answering from Redis, with the age of their data."""

    name = "vendedor-sync"

    def __init__(self, vendedores: Vendedores, settings: VendedorSettings) -> None:
        self._vendedores = vendedores
        self._redis = vendedores.store.redis
        self._interval = settings.vendedor_sync_interval_seconds

    async def run(self, stopping: asyncio.Event) -> None:
        retry = _FIRST_RETRY_SECONDS
        while not stopping.is_set():
            wait = self._interval
            try:
                synced_at, _ = await self._vendedores.store.sync_state()
                due = time.time() - synced_at >= self._interval
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
