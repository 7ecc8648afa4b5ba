"""Daemon logging: one line per event, as text or JSON, never blocking the caller.

A record's structured fields travel in `extra={"fields": {...}}`; the text format appends
them as `key=value` (strings JSON-quoted), the JSON format puts them beside `time`,
`level`, `logger` and `message`. Records pass through a bounded queue to a writer thread,
so a slow or full stderr (an unread pipe, a stalled log shipper) drops lines instead of
stalling the threads that log.
"""
from __future__ import annotations

import atexit
import enum
import json
import logging
import logging.handlers
import queue
import sys
import time


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


def _utc(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items())
        line = f"{_utc(record)} {record.levelname} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": _utc(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), **(getattr(record, "fields", None) or {})}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """QueueHandler that drops (and counts) records when its bounded queue is full."""

    def __init__(self, q: queue.Queue):
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None    # the writer formats the rest
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def configure_logging(fmt: LogFormat | str = LogFormat.TEXT, level: int = logging.INFO,
                      stream=None, max_queued: int = 10_000) -> DroppingQueueHandler:
    """Root logging for a daemon: one line per record on `stream` (stderr) in `fmt`."""
    fmt = LogFormat(fmt)
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    handler = DroppingQueueHandler(queue.Queue(max_queued))
    listener = logging.handlers.QueueListener(handler.queue, writer)
    listener.start()
    atexit.register(listener.stop)                 # flush what is queued at exit
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
