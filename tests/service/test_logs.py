"""`gateway.logs`: a timestamp on every line, JSON on demand, no traceback for an expected error.

Records go through a real logger and handler into a buffer; the test's own logger does not
propagate, so pytest's capture of the root logger is left alone.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from billing_engine.base.errors import ConfigError, InvalidConfigError
from gateway.logs import JsonFormatter, TextFormatter
from gateway.store.errors import StoreError

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("tests.service.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, buffer, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def _raise(exc: Exception) -> None:
    raise exc


def _bad_site() -> InvalidConfigError:
    return InvalidConfigError(
        [
            ConfigError("site.yaml", 12, "accounts.0.tariff", "no tariff 'x'"),
            ConfigError("site.yaml", 20, "mqtt.port", "must be <= 65535"),
        ]
    )


def test_logs_text_line_has_utc_timestamp_level_logger_and_message(
    logged: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, buffer, handler = logged
    handler.setFormatter(TextFormatter())
    logger.info("site %s: %d accounts", "s1", 3)
    assert re.fullmatch(
        rf"{STAMP} INFO tests\.service\.logs: site s1: 3 accounts\n", buffer.getvalue()
    )


def test_logs_text_expected_error_is_its_message_without_traceback(
    logged: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, buffer, handler = logged
    handler.setFormatter(TextFormatter())
    try:
        _raise(_bad_site())
    except InvalidConfigError:
        logger.exception("reload of site.yaml failed; keeping the running configuration")
    assert buffer.getvalue().endswith(
        " ERROR tests.service.logs: reload of site.yaml failed; keeping the running"
        " configuration: site.yaml:12: accounts.0.tariff: no tariff 'x'"
        " | site.yaml:20: mqtt.port: must be <= 65535\n"
    )
    assert "Traceback" not in buffer.getvalue()


def test_logs_text_bug_keeps_its_traceback(
    logged: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, buffer, handler = logged
    handler.setFormatter(TextFormatter())
    try:
        _raise(KeyError("missing"))  # a bug
    except KeyError:
        logger.exception("task pipeline failed")
    text = buffer.getvalue()
    assert "task pipeline failed\nTraceback (most recent call last):" in text
    assert text.rstrip().endswith("KeyError: 'missing'")


def test_logs_json_one_object_a_line_with_error_and_traceback_only_for_bugs(
    logged: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, buffer, handler = logged
    handler.setFormatter(JsonFormatter())
    logger.warning("device %s: timeout", "v1")
    try:
        _raise(StoreError("state.db: disk I/O error"))
    except StoreError:
        logger.exception("task pipeline failed")
    try:
        _raise(IndexError("list index out of range"))  # a bug
    except IndexError:
        logger.exception("task spool failed")

    warning, expected, bug = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert re.fullmatch(STAMP, warning.pop("at"))
    assert warning == {
        "level": "WARNING",
        "logger": "tests.service.logs",
        "message": "device v1: timeout",
    }
    assert expected["error"] == "state.db: disk I/O error"
    assert "traceback" not in expected
    assert bug["error"] == "list index out of range"
    assert bug["traceback"].startswith("Traceback (most recent call last):")
