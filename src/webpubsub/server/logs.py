"""How the service's log records are written: text for a terminal, or JSON lines.

``[server] log_format`` / ``--log-format`` choose; the CLI configures the handlers and
calls :func:`use_log_format` once the configuration is known. A JSON line is one
object: ``time`` (ISO 8601 in UTC, milliseconds: ``2026-12-01T17:30:00.123Z``),
``level``, ``logger``, ``message``, then ``hub``, ``connectionId`` and ``userId``
when the log call gave them (``extra=log_fields(...)``, :mod:`webpubsub.node.observe`),
and ``exception`` (the traceback's text) when it has one. Line breaks inside any value
are escaped by the JSON encoding: one record is always one line.

The log calls themselves never pass secrets (keys, tokens, signatures, the query of an
event handler's URL); this module adds nothing that is not in the record.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The text format's line (the CLI's default)."""

FIELDS = (("hub", "hub"), ("connection_id", "connectionId"), ("user_id", "userId"))
"""(record attribute set through ``extra``, JSON field)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for attribute, name in FIELDS:
            value = getattr(record, attribute, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _dumps(line)


def use_log_format(log_format: str) -> None:
    """Write every record of the root logger's handlers in ``log_format`` (``text`` or
    ``json``, ``LOG_FORMATS`` of the config)."""
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def _utc(created: float) -> str:
    """``2026-12-01T17:30:00.123Z``."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # arguments that do not fit the format: keep both, never fail
        return f"{record.msg!r} % {record.args!r}"


def _dumps(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate, a huge int
        return orjson.dumps({k: _printable(v) for k, v in line.items()}).decode()


def _printable(value: object) -> object:
    """``value`` as orjson takes it: text with lone surrogates escaped."""
    if isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
