"""Every Redis key of the vendedor service."""

from __future__ import annotations

# vendedor id → JSON. No expiry: a vendedor's history outlives its Kommo account.
VENDEDORES = "vd:vendedores"
# Unix seconds of the last successful sync with Kommo.
SYNCED_AT = "vd:synced-at"
# One replica syncs at a time; expires in case it dies.
SYNC_LOCK = "vd:sync-lock"
SYNC_LOCK_SECONDS = 120
