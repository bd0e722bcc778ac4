"""The base of every API model: camelCase on the wire, snake_case in Python, no unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes and YAML files spell it (camelCase, no unset Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(*rules: tuple[str, str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules as (rule, message, fieldPath) triples.

    The same rules are enforced by pydantic validators next to them; tests evaluate both.
    Guard every field a rule reads with ``has()``: the API server also checks each rule
    against the schema's ``default`` values, where nested defaults are not filled in.
    """
    out = []
    for rule, message, field_path in rules:
        entry = {"rule": rule, "message": message}
        if field_path:
            entry["fieldPath"] = field_path
        out.append(entry)
    return {"x-kubernetes-validations": out}
