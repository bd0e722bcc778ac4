"""The CustomResourceDefinition, generated from the pydantic models.

pydantic writes JSON Schema (draft 2020-12); the API server wants a *structural* OpenAPI v3
schema. The rewrite below inlines ``$ref``, folds ``anyOf[X, null]`` into ``X`` (the API
server prunes nulls of non-nullable fields, which is what an omitted optional field means),
turns numeric ``exclusiveMinimum`` into the OpenAPI 3.0 boolean form, and drops what the API
server rejects or ignores (``title``, ``examples``, ``additionalProperties: false``).
"""

from __future__ import annotations

from typing import Any

import yaml

from .resource import (
    API_VERSION,
    CATEGORIES,
    GROUP,
    KIND,
    NAME_MAX,
    NAME_PATTERN,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from .spec import ModelDeploymentSpec
from .status import ModelDeploymentStatus

_DROP = {"title", "examples", "$defs"}


def structural(
    schema: dict[str, Any], defs: dict[str, Any], keep_defaults: bool = True
) -> dict[str, Any]:
    """A structural copy of ``schema`` with every ``$ref`` resolved against ``defs``."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs, keep_defaults)

    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                del rest["default"]
            return structural({**branches[0], **rest}, defs, keep_defaults)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or (key == "default" and not keep_defaults):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            required = set(schema.get("required", ()))
            out[key] = {
                name: _with_empty_default(
                    structural(sub, defs, keep_defaults), sub, name in required
                )
                if keep_defaults
                else structural(sub, defs, keep_defaults)
                for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs, keep_defaults)
        elif key == "anyOf":
            out[key] = [structural(b, defs, keep_defaults) for b in value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _with_empty_default(
    out: dict[str, Any], source: dict[str, Any], required: bool
) -> dict[str, Any]:
    """Give sub-objects built by ``default_factory`` an empty default.

    pydantic cannot show a factory's value, but the API server must create ``compression: {}``
    when a user omits it, so that the nested defaults apply and CEL rules that read
    ``self.compression.quantize.mode`` see what pydantic sees. Optional fields (``X | None``)
    stay absent.
    """
    optional = any(b.get("type") == "null" for b in source.get("anyOf", ()))
    if required or optional or "default" in out:
        return out
    if out.get("type") == "object":
        return {**out, "default": {}}
    if out.get("type") == "array":
        return {**out, "default": []}
    return out


def _schema_of(
    model: type[ModelDeploymentSpec] | type[ModelDeploymentStatus], keep_defaults: bool
) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), keep_defaults)


def openapi_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the ModelDeployment resource."""
    spec = _schema_of(ModelDeploymentSpec, keep_defaults=True)
    status = _schema_of(ModelDeploymentStatus, keep_defaults=False)
    return {
        "type": "object",
        "description": "A model that onnxship compresses, verifies, stores and rolls out.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Declared so that the name rule can point at it (fieldPath): users then read
            # `metadata.name: Invalid value: ...` rather than `<nil>: Invalid value: ...`.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {NAME_MAX} && "
                f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": f"metadata.name must be a DNS-1035 label of at most {NAME_MAX} "
                "characters: it names the Services of every revision",
                "fieldPath": ".metadata.name",
            }
        ],
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stable", "type": "string", "jsonPath": ".status.stableRevision"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canaryRevision"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
    {"name": "Variant", "type": "string", "jsonPath": ".status.variant"},
    {"name": "Agreement", "type": "number", "jsonPath": ".status.agreement"},
    {
        "name": "Live-Agreement",
        "type": "number",
        "jsonPath": ".status.analysis.outputAgreement",
        "priority": 1,
    },
    {
        "name": "TTFT-P99-ms",
        "type": "number",
        "jsonPath": ".status.analysis.timeToFirstTokenP99Ms",
        "priority": 1,
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.version", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for ModelDeployment."""
    assert f"{GROUP}/{VERSION}" == API_VERSION
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `onnxship crd` from onnxship.api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
