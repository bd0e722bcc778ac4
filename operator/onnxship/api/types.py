"""Scalar types shared by the spec, the status and the manifest.

Each type carries its validation twice on purpose: once for pydantic (the CLI, local mode,
the operator) and once in its JSON schema (the CRD), so that the API server and pydantic
reject the same values with messages that name the same field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Compound durations like Go's time.ParseDuration, minus the sub-millisecond units.
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SHA256_HEX = r"^[a-f0-9]{64}$"
MODEL_URI = r"^(s3|https?|file)://.+$"
STORE_URI = r"^(s3|file)://.+$"
ENDPOINT_URL = r"^https?://.+$"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``2m``, ``1h30m`` or ``250ms``."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit (ms, s, m, h), e.g. 30s or 2m"
        )
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest readable duration for a number of seconds (inverse of parse_duration)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not (h or m) else ""]
    return "".join(parts)


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION, max_length=32),
    AfterValidator(_check_duration),
    Field(examples=["30s", "2m", "1h"]),
]
DNSLabel = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
DNSSubdomain = Annotated[str, StringConstraints(pattern=DNS1123_SUBDOMAIN, max_length=253)]
# An empty string means "not set"; Kubernetes users write "" as often as they omit a field.
OptionalSecretName = Annotated[
    str, StringConstraints(pattern=r"^$|" + DNS1123_SUBDOMAIN[1:], max_length=253)
]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^$|^[a-f0-9]{64}$", max_length=64)]
Percent = Annotated[int, Field(ge=0, le=100)]


def _quantity_to_str(value: Any) -> Any:
    # YAML turns `cpu: 1` into an int and `cpu: 0.5` into a float; the API server keeps
    # them as int-or-string, so accept numbers and keep their spelling.
    if isinstance(value, bool):
        raise ValueError("a resource quantity is a number or a string like 500m or 1Gi")
    if isinstance(value, int | float):
        return format(value, "g")
    return value


QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    StringConstraints(pattern=QUANTITY, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
    ),
]
