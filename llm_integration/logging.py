"""A log formatter that prints the ``extra`` fields of structured log calls as JSON.

logger.info("llm.request", extra={"request_id": rid, "alias": "chat", "status": "ok"})
-> 2026-11-21T23:00:00Z INFO llm_integration.services llm.request {"request_id": ...}
"""

from __future__ import annotations

import json
import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class StructuredFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if fields:
            line += " " + json.dumps(fields, default=str, sort_keys=True)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
