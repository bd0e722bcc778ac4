"""What the API server does with a custom resource, done offline for tests.

Until e2e/ checks them against a real kube-apiserver, these emulate its three gates in the
order it applies them: strict field validation (kubectl's default: unknown fields are
errors), the openAPIV3Schema, then defaulting and the CEL rules (x-kubernetes-validations),
evaluated with cel-python plus the Kubernetes list-library functions our rules use.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


def _path(parts: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def unknown_fields(schema: dict[str, Any], obj: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Fields the structural schema does not declare (the API server prunes or, strict, rejects)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    errors = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key not in schema["properties"]:
                errors.append(f'{_path((*path, key))}: unknown field "{key}"')
            elif path or key != "metadata":
                errors += unknown_fields(schema["properties"][key], value, (*path, key))
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            errors += unknown_fields(schema["additionalProperties"], value, (*path, key))
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            errors += unknown_fields(schema["items"], value, (*path, i))
    return errors


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    """openAPIV3Schema violations, each as ``field.path: message``.

    OpenAPI 3.0 schemas use draft-4 semantics (boolean exclusiveMinimum); the x-kubernetes-*
    keywords are not JSON Schema and are ignored here.
    """
    validator = jsonschema.Draft4Validator(schema)
    return sorted(
        f"{_path(list(e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(obj)
    )


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill in schema defaults the way the API server does before it runs CEL."""
    obj = copy.deepcopy(obj)
    _default_into(schema, obj)
    return obj


def _default_into(schema: dict[str, Any], obj: Any) -> None:
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default_into(sub, obj[key])
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            _default_into(schema["items"], item)


def _is_sorted(values: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(values[i] <= values[i + 1] for i in range(len(values) - 1)))


def _sum(values: celtypes.ListType) -> celtypes.IntType:
    total = celtypes.IntType(0)
    for v in values:
        total = total + v
    return total


# The Kubernetes CEL list library (k8s.io/apiserver/pkg/cel/library/lists.go) functions we use.
K8S_FUNCTIONS = {"isSorted": _is_sorted, "sum": _sum}


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_FUNCTIONS)


def cel_errors(schema: dict[str, Any], obj: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Messages of the failing x-kubernetes-validations rules, as the API server words them."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", ()):
        try:
            result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        except celpy.CELEvalError:
            result = None  # the API server refuses an object whose rule cannot be evaluated
        if result is None or not bool(result):
            where = (
                _path(path) + rule.get("fieldPath", "") if rule.get("fieldPath") else _path(path)
            )
            errors.append(f"{where or '(root)'}: Invalid value: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                errors += cel_errors(sub, obj[key], (*path, key))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                errors += cel_errors(extra, value, (*path, key))
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            errors += cel_errors(schema["items"], item, (*path, i))
    return errors


def admission_errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Everything the API server would say about ``obj``, empty when it would be accepted."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    errors = unknown_fields(schema, obj) + schema_errors(schema, obj)
    if errors:
        return errors
    return cel_errors(schema, apply_defaults(schema, obj))
