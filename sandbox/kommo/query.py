"""What Kommo's v4 list and batch requests say besides their body: ``with=``, a filter
in any of Kommo's three spellings, and each batch item's ``request_id``."""

from collections.abc import Sequence

from fastapi import Request

from sandbox.kommo.models import ContactPatchItem, LeadPatchItem, NoteIn, TaskIn
from sandbox.kommo.responses import ValidationIssue, validation_problem


def with_values(request: Request) -> set[str]:
    """What ``with=a,b`` asks the answer to embed."""
    return {part.strip() for part in request.query_params.get("with", "").split(",") if part}


def filter_values(request: Request, name: str) -> list[str]:
    """``filter[x]=a,b``, ``filter[x][]=a`` and ``filter[x][0]=a`` all name values of x."""
    key = f"filter[{name}]"
    values: list[str] = []
    for param, value in request.query_params.multi_items():
        if param == key or (param.startswith(key + "[") and param.endswith("]")):
            values += [part for part in value.split(",") if part]
    return values


def int_filter(request: Request, name: str) -> set[int]:
    """A filter's values as numbers; Kommo's validation problem when one is not."""
    try:
        return {int(value) for value in filter_values(request, name)}
    except ValueError as exc:
        raise validation_problem(
            [ValidationIssue("0", f"filter.{name}", "must be a number")]
        ) from exc


def item_request_ids(
    items: Sequence[LeadPatchItem | ContactPatchItem | NoteIn | TaskIn],
) -> list[str]:
    """Each item's ``request_id``: the one the client set, else its index as a string."""
    return [item.request_id or str(index) for index, item in enumerate(items)]
