"""Logs: one JSON object per line off a TTY (in the cluster), readable text on a TTY."""

from __future__ import annotations

import io
import json
import logging

from onnxship.logs import configure_logging


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "auto", stream=stream)
    logging.getLogger("onnxship.test").info(
        "revision %s ready", "enc-1a2b", extra={"revision": "enc-1a2b", "weight": 10}
    )
    entry = json.loads(stream.getvalue().strip())
    assert entry["message"] == "revision enc-1a2b ready"
    assert entry["level"] == "info" and entry["logger"] == "onnxship.test"
    assert entry["revision"] == "enc-1a2b" and entry["weight"] == 10
    assert entry["time"].endswith("+00:00")


def test_readable_text_on_a_tty() -> None:
    stream = FakeTTY()
    configure_logging("INFO", "auto", stream=stream)
    logging.getLogger("onnxship.test").warning("canary degraded")
    text = stream.getvalue()
    assert "canary degraded" in text and not text.lstrip().startswith("{")


def test_debug_is_filtered_at_info() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("onnxship.test").debug("noise")
    assert stream.getvalue() == ""
