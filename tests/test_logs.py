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


def test_kopf_object_lines_name_the_object_and_carry_no_settings_dump() -> None:
    """kopf's per-object logger adds its OperatorSettings to every record: in JSON lines
    that was ~2.5 KB of settings on each line; the object is what a reader needs."""
    import kopf

    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    body = kopf.Body({"apiVersion": "onnxship.io/v1alpha1", "kind": "ModelDeployment",
                      "metadata": {"name": "enc", "namespace": "ml", "uid": "u1"}})  # fmt: skip
    kopf.ObjectLogger(body=body, settings=kopf.OperatorSettings()).info("Handler 'x' succeeded.")
    line = stream.getvalue().strip()
    entry = json.loads(line)
    assert entry["message"] == "Handler 'x' succeeded."
    assert entry["object"] == "ml/enc" and entry["kind"] == "ModelDeployment"
    assert "settings" not in entry and "k8s_skip" not in entry and "k8s_ref" not in entry
    assert len(line) < 400, line
