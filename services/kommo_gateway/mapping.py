"""Kommo's JSON → protobuf messages. Plain functions, no I/O."""

from __future__ import annotations

from typing import Any

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as pb


def custom_fields(values: list[dict[str, Any]] | None) -> list[pb.CustomField]:
    fields = []
    for field in values or []:
        fields.append(
            pb.CustomField(
                field_id=int(field.get("field_id") or 0),
                field_name=str(field.get("field_name") or ""),
                field_code=str(field.get("field_code") or ""),
                values=[str(v.get("value", "")) for v in field.get("values") or []],
            )
        )
    return fields


def lead(body: dict[str, Any]) -> pb.Lead:
    embedded = body.get("_embedded") or {}
    contacts = embedded.get("contacts") or []
    main = next((c for c in contacts if c.get("is_main")), contacts[0] if contacts else None)
    return pb.Lead(
        id=int(body["id"]),
        name=str(body.get("name") or ""),
        price=int(body.get("price") or 0),
        responsible_user_id=int(body.get("responsible_user_id") or 0),
        status_id=int(body.get("status_id") or 0),
        pipeline_id=int(body.get("pipeline_id") or 0),
        created_at=int(body.get("created_at") or 0),
        updated_at=int(body.get("updated_at") or 0),
        custom_fields=custom_fields(body.get("custom_fields_values")),
        contact_ids=[int(c["id"]) for c in contacts],
        main_contact_id=int(main["id"]) if main else 0,
        tags=[str(t["name"]) for t in embedded.get("tags") or [] if t.get("name")],
    )


def contact(body: dict[str, Any]) -> pb.Contact:
    fields = body.get("custom_fields_values") or []
    # Its leads, when read `with=leads`: a copy cached before has none (see lists_leads).
    leads = (body.get("_embedded") or {}).get("leads") or []

    def values(code: str) -> list[str]:
        return [
            str(v.get("value"))
            for f in fields
            if f.get("field_code") == code
            for v in f.get("values") or []
            if v.get("value")
        ]

    return pb.Contact(
        id=int(body["id"]),
        name=str(body.get("name") or ""),
        phones=values("PHONE"),
        emails=values("EMAIL"),
        responsible_user_id=int(body.get("responsible_user_id") or 0),
        custom_fields=custom_fields(fields),
        lead_ids=[int(lead["id"]) for lead in leads],
    )


def lists_leads(body: dict[str, Any]) -> bool:
    """Whether a contact's body was read `with=leads` (kommo_client.py always leaves the
    list there, empty or not); a copy cached by a gateway before lead_ids has none."""
    return "leads" in (body.get("_embedded") or {})


def user(body: dict[str, Any]) -> pb.User:
    rights = body.get("rights") or {}
    return pb.User(
        id=int(body["id"]),
        name=str(body.get("name") or ""),
        email=str(body.get("email") or ""),
        is_active=bool(rights.get("is_active", True)),
        is_admin=bool(rights.get("is_admin", False)),
    )


# A template's reviews from the worst to the best: with several WhatsApp numbers Kommo may
# review a template once for each, and it is usable everywhere only when all approve.
_REVIEW_ORDER = ("rejected", "paused", "review", "approved")


def template(body: dict[str, Any]) -> pb.Template:
    return pb.Template(
        id=int(body.get("id") or 0),
        name=str(body.get("name") or ""),
        content=str(body.get("content") or ""),
        review_status=review_status(body),
        type=str(body.get("type") or ""),
    )


def review_status(body: dict[str, Any]) -> str:
    """`review_status` as `with=reviews` adds it; else the worst `status` of a list of
    reviews (top-level or embedded: the shape is not confirmed); "" when there is none."""
    status = body.get("review_status")
    if isinstance(status, str) and status:
        return status
    reviews = body.get("reviews")
    if not isinstance(reviews, list):
        reviews = (body.get("_embedded") or {}).get("reviews")
    statuses = [
        str(r["status"])
        for r in reviews or []
        if isinstance(r, dict) and isinstance(r.get("status"), str) and r["status"]
    ]
    if not statuses:
        return ""
    return min(statuses, key=lambda s: _REVIEW_ORDER.index(s) if s in _REVIEW_ORDER else -1)
