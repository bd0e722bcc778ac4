"""Logging, set up once per process: JSON lines in the cluster, readable lines in a terminal."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# kopf's plumbing on its per-object records (its own JSON formatter leaves them out too):
# ``settings`` is the whole OperatorSettings, kilobytes on every line.
_KOPF = {"settings", "k8s_skip", "k8s_ref"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with fixed keys: time, level, logger, message, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            # kopf's per-object loggers: the object, in the form our own lines use.
            ns = ref.get("namespace")
            entry["object"] = f"{ns}/{ref['name']}" if ns else str(ref["name"])
            entry["kind"] = str(ref.get("kind", ""))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _KOPF and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """``fmt``: ``json``, ``text``, or ``auto`` (text on a TTY, JSON otherwise)."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler: logging.Handler
    if use_json:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
