"""The route table: which backends serve which revision, and with what weight.

One model shared by the builtin router (``onnxship route`` reads it from a file or its admin
endpoint), local mode and the operator (which writes it into a ConfigMap). Weights are per
revision; when backends carry environments, each environment splits its requests between
revisions with the same weights, and requests without an ``onnxship-environment`` header are
spread over environments by ``environments`` (equal shares when empty).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from .base import ApiModel
from .types import ENDPOINT_URL, Percent


class Backend(ApiModel):
    revision: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    url: Annotated[str, StringConstraints(pattern=ENDPOINT_URL, max_length=2048)] = Field(
        description="Base URL of the revision's server, e.g. http://127.0.0.1:9001"
    )
    weight: Percent = Field(description="Share of its environment's requests, in percent.")
    environment: str = Field("", description="Hardware pool; empty = serves every environment.")


class MirrorRoute(ApiModel):
    revision: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    percent: Percent = Field(description="Share of requests copied to this revision.")


class RouteTable(ApiModel):
    backends: list[Backend] = Field(default_factory=list)
    mirror: MirrorRoute | None = None
    environments: dict[str, Percent] = Field(
        default_factory=dict,
        description="Shares of requests without an environment header; empty = equal shares.",
    )

    @model_validator(mode="after")
    def _weights_sum(self) -> RouteTable:
        for env in self.environment_names():
            total = sum(b.weight for b in self.backends if b.environment == env)
            if total != 100:
                where = f"environment {env!r}" if env else "backends"
                raise ValueError(f"weights of {where} sum to {total}, not 100")
        if self.environments and sum(self.environments.values()) != 100:
            raise ValueError("environments weights must sum to 100")
        if self.mirror and self.mirror.percent and not any(
            b.revision == self.mirror.revision for b in self.backends
        ):
            raise ValueError(f"mirror revision {self.mirror.revision!r} has no backend")
        return self

    def environment_names(self) -> list[str]:
        """Environments in order of first appearance ("" when backends carry none)."""
        seen: dict[str, None] = {}
        for b in self.backends:
            seen.setdefault(b.environment, None)
        return list(seen)

    def weights(self) -> dict[str, int]:
        """Revision -> weight (the same in every environment by construction)."""
        out: dict[str, int] = {}
        for b in self.backends:
            out.setdefault(b.revision, b.weight)
        return out
