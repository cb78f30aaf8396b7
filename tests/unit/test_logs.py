"""Secrets and customers' phone numbers never reach the logs."""

from __future__ import annotations

import json
import logging

from services.common.logs import JsonFormatter, Masker, request_id


def test_phone_numbers_keep_only_their_last_four_digits() -> None:
    mask = Masker()
    assert mask("cliente +55 11 97371-8281 escreveu") == "cliente *********8281 escreveu"
    assert mask("tel 5511973718281") == "tel *********8281"
    assert mask("lead 9100001 user 10000005") == "lead 9100001 user 10000005"


def test_registered_secrets_are_replaced() -> None:
    mask = Masker()
    mask.add_secrets(["s3cr3t-value-xyz", "", "abc"])
    assert mask("token=s3cr3t-value-xyz!") == "token=***!"
    assert mask("abc stays: too short to be a secret") == "abc stays: too short to be a secret"


def test_log_lines_are_json_with_request_id_and_masked_extras() -> None:
    formatter = JsonFormatter("edge_api")
    record = logging.LogRecord("x", logging.INFO, "f", 1, "from %s", ("+5511973718281",), None)
    record.phone = "+55 11 97371-8281"
    token = request_id.set("req-1")
    try:
        line = json.loads(formatter.format(record))
    finally:
        request_id.reset(token)
    assert line["msg"] == "from *********8281"
    assert line["phone"] == "*********8281"
    assert line["request_id"] == "req-1"
    assert line["service"] == "edge_api"
