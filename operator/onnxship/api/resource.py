"""The ModelDeployment object as a whole, and how a user's document becomes one."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from .base import ApiModel
from .spec import ModelDeploymentSpec
from .status import ModelDeploymentStatus

GROUP = "onnxship.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
CATEGORIES = ["onnxship", "ml"]

# Object names become Service names (DNS-1035 labels, 63 chars) as `<name>-<hash10>-<env20>`.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 30


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, StringConstraints(max_length=253)]
    namespace: str = "default"
    generation: int = 0
    uid: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns1035(cls, v: str) -> str:
        if not re.fullmatch(NAME_PATTERN, v) or len(v) > NAME_MAX:
            raise ValueError(
                f"{v!r}: a ModelDeployment name is a lowercase DNS-1035 label of at most "
                f"{NAME_MAX} characters (letters, digits, '-', starting with a letter)"
            )
        return v


class ModelDeployment(ApiModel):
    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: Metadata
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, v: str) -> str:
        if v != API_VERSION:
            raise ValueError(f"expected {API_VERSION!r}, got {v!r}")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != KIND:
            raise ValueError(f"expected {KIND!r}, got {v!r}")
        return v


class SpecError(ValueError):
    """A user's document is invalid; ``problems`` holds one ``field.path: message`` per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not a valid {KIND}:\n{listing}")


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('spec', 'rollout', 'steps', 1, 'setWeight')`` -> ``spec.rollout.steps[1].setWeight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "float"}:
            continue  # pydantic's internal validator names, not the user's fields
        else:
            out += f".{part}" if out else part
    return out


# Cross-field validators cannot set pydantic's error location, so they start their message
# with the path of the field to fix, relative to the model: "model.sampleInputs: needs ...".
_RELATIVE_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$", re.S)


def describe(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        path = field_path(prefix + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "value_error" and (m := _RELATIVE_PATH.match(msg)):
            path = f"{path}.{m.group(1)}" if path else m.group(1)
            msg = m.group(2)
        path = path or "(document)"
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and indentation)"
        problems.append(f"{path}: {msg}")
    return problems


def parse_model_deployment(doc: Any, source: str = "the document") -> ModelDeployment:
    """Validate a ModelDeployment document (a dict from YAML or the API server)."""
    if not isinstance(doc, dict):
        raise SpecError(
            source, ["(document): expected a mapping with apiVersion, kind, metadata, spec"]
        )
    try:
        return ModelDeployment.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(source, describe(exc)) from None


def parse_spec(spec: Any, source: str = "spec") -> ModelDeploymentSpec:
    """Validate only a spec (what kopf hands to a handler)."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(source, describe(exc, ("spec",))) from None
