"""Which Kommo lead-status webhooks start a proactive conversation: a status of one
pipeline, or a status id in any pipeline — never won or lost without their pipeline,
since those two ids are the same in every pipeline."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.conversation.settings import ConversationSettings
from tests.unit.test_production_settings import WIRING


def _settings(proactive_on_status: str) -> ConversationSettings:
    values: dict[str, Any] = {
        **WIRING,
        "kommo_sandbox": True,
        "proactive_on_status": proactive_on_status,
    }
    return ConversationSettings(_env_file=None, **values)


def test_a_status_trigger_matches_its_pipeline_or_any_pipeline() -> None:
    settings = _settings("71000002:form, 7100001:142:pos-venda")
    assert settings.status_trigger(7100001, 71000002) == "form"
    assert settings.status_trigger(7200000, 71000002) == "form"
    assert settings.status_trigger(7100001, 142) == "pos-venda"
    # Won in another pipeline is another sale: nothing starts.
    assert settings.status_trigger(7200000, 142) == ""
    assert settings.status_trigger(7100001, 71000003) == ""


def test_a_pipeline_of_its_own_wins_over_any_pipeline() -> None:
    settings = _settings("71000002:form,7100001:71000002:download")
    assert settings.status_trigger(7100001, 71000002) == "download"
    assert settings.status_trigger(7100002, 71000002) == "form"


@pytest.mark.parametrize("value", ["142:ganho", "143:perdido"])
def test_won_and_lost_without_their_pipeline_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="exists in every pipeline"):
        _settings(value)


@pytest.mark.parametrize("value", ["won", "1:2:3:x", "a:b:form", "71000002:"])
def test_a_malformed_entry_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="must be status_id:trigger or pipeline_id"):
        _settings(value)
