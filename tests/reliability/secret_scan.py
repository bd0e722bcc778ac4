"""Looks for known secret values in text, bytes and objects, in every form they could leak in.

A credential leaks as itself (a log line, a status message), base64-encoded (a copied Secret's
``data``, an env file inside a base64 blob: at any of the three alignments), URL-quoted (a
query string, a URI's userinfo) or JSON-escaped (``/`` as ``\\/``). The forms are searched
as bytes, so a blob written to the store is scanned like a log.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def leak_forms(secret: str) -> dict[str, bytes]:
    """Every byte string that betrays ``secret``, by the name of its encoding."""
    raw = secret.encode()
    forms = {
        "raw": raw,
        "url-quoted": urllib.parse.quote(secret, safe="").encode(),
        "json-escaped": json.dumps(secret)[1:-1].replace("/", "\\/").encode(),
    }
    for b64, alphabet in ((base64.b64encode, "base64"), (base64.urlsafe_b64encode, "base64url")):
        for k in range(3):  # the secret at offset k (mod 3) of a longer encoded stream
            encoded = b64(b"\0" * k + raw)
            start = math.ceil(8 * k / 6)  # characters that also encode the bytes before it
            end = (8 * (k + len(raw))) // 6  # characters that also encode the bytes after it
            forms[f"{alphabet}@{k}"] = encoded[start:end]
    return forms


@dataclass
class SecretScan:
    """Collects where any of ``secrets`` turned up; ``assert_clean()`` fails naming each."""

    secrets: dict[str, str]  # name (for messages) -> value
    findings: list[str] = field(default_factory=list)
    scanned: dict[str, int] = field(default_factory=dict)  # what was read: place -> bytes

    def __post_init__(self) -> None:
        for name, value in self.secrets.items():
            assert len(value) >= 16, f"{name}: too short to be found without false alarms"
        self._forms = {name: leak_forms(v) for name, v in self.secrets.items()}

    def scan(self, where: str, content: str | bytes | Any) -> None:
        if isinstance(content, str):
            data = content.encode(errors="surrogateescape")
        elif isinstance(content, bytes | bytearray):
            data = bytes(content)
        else:  # an object (a Kubernetes resource, a request body): as its JSON
            data = json.dumps(content, default=str).encode()
        self.scanned[where] = self.scanned.get(where, 0) + len(data)
        for name, forms in self._forms.items():
            for form, needle in forms.items():
                at = data.find(needle)
                if at >= 0:
                    context = data[max(0, at - 80) : at + len(needle) + 40]
                    self.findings.append(f"{name} ({form}) in {where}: ...{context!r}...")

    def scan_all(self, items: Iterable[tuple[str, Any]]) -> None:
        for where, content in items:
            self.scan(where, content)

    def assert_clean(self) -> None:
        assert self.scanned, "nothing was scanned"
        assert not self.findings, "secrets leaked:\n" + "\n".join(self.findings)
