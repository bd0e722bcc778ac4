"""A model's inputs and outputs as the Open Inference Protocol describes them."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from .datatypes import ORT_TO_OIP
from .errors import StartupError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension
    dims: tuple[int | str | None, ...]  # as ONNX names them: a symbol ties dims together

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: ort.NodeArg, kind: str) -> TensorSpec:
    datatype = ORT_TO_OIP.get(arg.type)
    if datatype is None:
        raise StartupError(
            f"{kind} {arg.name!r} has type {arg.type}, which the inference protocol cannot carry",
            kind="invalid_model",
        )
    dims = tuple(arg.shape or ())
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
    return TensorSpec(arg.name, datatype, shape, dims)


@dataclass(frozen=True)
class ModelSignature:
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> ModelSignature:
        return cls(
            {a.name: _spec(a, "input") for a in session.get_inputs()},
            {a.name: _spec(a, "output") for a in session.get_outputs()},
        )

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic first dimension, so rows can be stacked."""
        specs = [*self.inputs.values(), *self.outputs.values()]
        return bool(specs) and all(s.shape and s.shape[0] == -1 for s in specs)

    def sequence_axis(self) -> dict[str, int] | None:
        """Outputs to crop after padding, when requests of different lengths may be padded.

        Padding is safe only when the model says which tokens are real: it must take an
        ``attention_mask``, and every input must be ``[batch, seq]`` with the same dynamic
        sequence symbol. The answer maps each output to crop (its axis 1 carries that symbol)
        to 1; other outputs (pooled embeddings, logits) are returned whole.
        """
        if "attention_mask" not in self.inputs or not self.batchable:
            return None
        symbols = {s.dims[1] if len(s.dims) == 2 else None for s in self.inputs.values()}
        if len(symbols) != 1:
            return None
        (symbol,) = symbols
        if not isinstance(symbol, str):
            return None
        return {
            o.name: 1 for o in self.outputs.values() if len(o.dims) >= 2 and o.dims[1] == symbol
        }
