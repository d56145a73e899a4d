"""JSON logs (structlog) that carry the correlation id and never print personal data or secrets.

Guarantee: every log line, whichever library logged it (ours, FastStream, aiokafka, uvicorn),
passes through `redact_personal_data`, i.e. `shared.redaction`: a value under a key that names
personal data or a secret (names, email, phone, address, `reason_text`, `chart_note`, `note`,
password, token, api key, authorization …) is "[redacted]" at any depth; email addresses, phone
numbers, URL passwords and bearer tokens are masked inside every string, including the message,
tracebacks and the text of objects (models, dataclasses, exceptions, anything else by its
`repr`). Dates, timestamps, ids, offsets and amounts stay readable. Log a validation error with
`describe_validation_error(exc)` ("loc: msg" only, never the input values).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from shared.redaction import describe_validation_error, redact_fields

__all__ = ["configure_logging", "describe_validation_error", "get_logger", "redact_personal_data"]

# Put into the event by structlog's ProcessorFormatter for its own use, removed before rendering.
_PROCESSOR_META = frozenset({"_record", "_from_structlog"})


def redact_personal_data(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The structlog processor: the event with personal data and secrets masked."""
    fields = {key: value for key, value in event_dict.items() if key not in _PROCESSOR_META}
    meta = {key: value for key, value in event_dict.items() if key in _PROCESSOR_META}
    return {**redact_fields(fields), **meta}


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and the standard library through one redacting renderer."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.format_exc_info,
        redact_personal_data,  # after format_exc_info: tracebacks are masked too
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # A line below the level is dropped first, before any processor (redaction is not cheap):
        # a debug line on the hot path then costs one level check.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
