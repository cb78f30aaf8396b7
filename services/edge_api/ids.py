"""Kommo ids at the HTTP boundary, in the one range of services/common/kommo_ids.py:
an id outside it is refused here like a non-numeric one (422, naming the field)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

from services.common.kommo_ids import KOMMO_ID_MAX, KOMMO_ID_MIN

_RANGE = f"a Kommo id: an integer from {KOMMO_ID_MIN} to {KOMMO_ID_MAX}"

KommoId = Annotated[int, Field(ge=KOMMO_ID_MIN, le=KOMMO_ID_MAX, description=_RANGE)]
KommoIdPath = Annotated[int, Path(ge=KOMMO_ID_MIN, le=KOMMO_ID_MAX, description=_RANGE)]
KommoIdQuery = Annotated[int | None, Query(ge=KOMMO_ID_MIN, le=KOMMO_ID_MAX, description=_RANGE)]
