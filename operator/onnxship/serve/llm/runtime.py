"""The decoder over plain ONNX Runtime: one session, a KV cache in preallocated slots.

The graph is ONNX Runtime GenAI's (``past_key_values.N.key/value`` in, ``present.N.*`` and
``logits`` out, GroupQueryAttention inside). GroupQueryAttention finds each row's length from
``attention_mask`` (its sum) and, when a present output is bound to the very memory of its past
input, writes the new keys and values in place: the cache is never copied. So each sequence
owns one slot (a row of a [slots, kv_heads, max_len, head] buffer per layer), a prompt is run
alone on its slot, and one decode step runs rows 0..n of the buffer at once, each row with its
own length (right padding in the mask). This is what lets requests join and leave a running
batch at any step, which onnxruntime-genai's CPU Engine (static batches) cannot. A slot's rows
stay valid after its sequence ends, so a prompt that starts like a cached one copies those
positions (``copy_prefix``) and runs only the rest: keys and values at a position depend only on
the tokens up to it, and the rest runs as a later chunk of the same prompt would.

Blocking: everything here runs on the engine's one thread; ORT releases the GIL while it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

_ORT_FLOAT: dict[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


@dataclass(frozen=True)
class DecoderLayout:
    """What genai_config.json and the graph say about the KV cache."""

    layers: int
    kv_heads: int
    head_size: int
    context: int
    vocab: int
    eos: tuple[int, ...]
    pad: int
    kv_dtype: type[np.floating]
    input_ids: str
    attention_mask: str
    past_key: str  # with %d
    past_value: str
    present_key: str
    present_value: str
    logits: str

    @property
    def bytes_per_token(self) -> int:
        """KV cache bytes one token takes in one sequence (keys and values, every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_size * np.dtype(self.kv_dtype).itemsize

    @classmethod
    def read(cls, folder: Path, session: ort.InferenceSession) -> DecoderLayout:
        config = json.loads((folder / "genai_config.json").read_text())
        model = config["model"]
        dec = model["decoder"]
        ins, outs = dec.get("inputs", {}), dec.get("outputs", {})
        past_key = ins.get("past_key_names", "past_key_values.%d.key")
        kv_input = {i.name: i for i in session.get_inputs()}.get(past_key % 0)
        if kv_input is None:
            raise ValueError(f"the graph has no input {past_key % 0!r} (genai_config.json)")
        logits = outs.get("logits", "logits")
        out = {o.name: o for o in session.get_outputs()}.get(logits)
        if out is None:
            raise ValueError(f"the graph has no output {logits!r} (genai_config.json)")
        vocab = int(model["vocab_size"])
        if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] != vocab:
            raise ValueError(
                f"the graph's {logits!r} has {out.shape[-1]} columns but genai_config.json "
                f"says vocab_size {vocab}"
            )
        eos = model.get("eos_token_id", [])
        eos = tuple(eos) if isinstance(eos, list) else (int(eos),)
        pad = model.get("pad_token_id", eos[0] if eos else 0)
        return cls(
            layers=int(dec["num_hidden_layers"]),
            kv_heads=int(dec["num_key_value_heads"]),
            head_size=int(dec["head_size"]),
            context=int(model.get("context_length") or config["search"]["max_length"]),
            vocab=vocab,
            eos=eos,
            pad=int(pad[0] if isinstance(pad, list) else pad),
            kv_dtype=_ORT_FLOAT.get(kv_input.type, np.float32),
            input_ids=ins.get("input_ids", "input_ids"),
            attention_mask=ins.get("attention_mask", "attention_mask"),
            past_key=past_key,
            past_value=ins.get("past_value_names", "past_key_values.%d.value"),
            present_key=outs.get("present_key_names", "present.%d.key"),
            present_value=outs.get("present_value_names", "present.%d.value"),
            logits=logits,
        )


LAST_ROWS = "onnxship_last_rows"  # the input that ``last_rows_graph`` adds


def last_rows_graph(model_file: Path, logits: str) -> bytes | None:
    """The model's graph with its logits cut to the rows it is asked for, or None when the
    graph does not end the way GenAI's builder writes it (then the graph is used as it is).

    The builder's lm_head runs on every position of a prompt: 49,152 x 576 per token for
    SmolLM2, 15-20% of a prompt's compute and a [tokens, vocab] output, of which one row is
    read. A Gather of the asked rows (input ``LAST_ROWS``, flat indices into batch x sequence)
    before the lm_head's MatMul keeps each row's arithmetic as it was. Only the graph is
    returned (no weights): ``create_session(graph=)`` loads it with the model's folder as where
    its external data lies, which ONNX Runtime memory-maps as it does for a model file. Handed
    over from memory instead, the weights were copied: SmolLM2 int8 peaked at 2x the RSS at load.
    Data file names are checked (model files are untrusted) before ORT checks them again.
    """
    folder = model_file.parent.resolve()
    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    head = next((n for n in graph.node if logits in n.output), None)
    weights = {t.name for t in graph.initializer}
    if (
        head is None
        or head.op_type not in ("MatMul", "MatMulNBits")
        or head.output[0] != logits
        or not head.input
        or head.input[0] in weights
    ):
        return None
    for tensor in graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        name = next((e.value for e in tensor.external_data if e.key == "location"), "")
        path = (folder / name).resolve()
        if not name or Path(name).is_absolute() or path.parent != folder or not path.is_file():
            return None  # ONNX Runtime names the problem when it loads the file itself
    hidden = head.input[0]
    nodes = list(graph.node)
    at = nodes.index(head)
    nodes[at:at] = [
        helper.make_node("Flatten", [hidden], ["onnxship/flat_hidden"], axis=2),
        helper.make_node("Gather", ["onnxship/flat_hidden", LAST_ROWS], ["onnxship/rows"]),
    ]
    head.input[0] = "onnxship/rows"
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(LAST_ROWS, TensorProto.INT64, ["rows"]))
    out = next(o for o in graph.output if o.name == logits)
    dims = out.type.tensor_type.shape.dim
    vocab = dims[-1] if dims else None
    shape = out.type.tensor_type.shape
    shape.ClearField("dim")
    shape.dim.add().dim_param = "rows"
    if vocab is not None and vocab.HasField("dim_value"):
        shape.dim.add().dim_value = vocab.dim_value
    else:
        shape.dim.add().dim_param = "vocab"
    return model.SerializeToString()


class DecoderRuntime:
    """One session and the slots' KV buffers; ``prefill`` and ``decode`` return logits."""

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: DecoderLayout,
        slots: int,
        max_len: int,
        last_rows: bool = False,
    ) -> None:
        self.session = session
        self.last_rows = last_rows  # the graph takes LAST_ROWS (``last_rows_graph``)
        self.layout = layout
        self.slots = slots
        self.max_len = max_len
        shape = (slots, layout.kv_heads, max_len, layout.head_size)
        # np.zeros maps untouched pages lazily: memory grows with the tokens really cached.
        self._keys = [np.zeros(shape, layout.kv_dtype) for _ in range(layout.layers)]
        self._values = [np.zeros(shape, layout.kv_dtype) for _ in range(layout.layers)]
        self._row_bytes = layout.kv_heads * max_len * layout.head_size
        self._row_bytes *= np.dtype(layout.kv_dtype).itemsize
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}
        kind = {o.name: o.type for o in session.get_outputs()}.get(layout.logits, "")
        rows: tuple[int, ...] = (slots, layout.vocab) if last_rows else (slots, 1, layout.vocab)
        self._decode_logits = np.zeros(rows, _ORT_FLOAT.get(kind, np.float32))

    @property
    def kv_bytes(self) -> int:
        return self.slots * self.max_len * self.layout.bytes_per_token

    def prefill(self, slot: int, ids: list[int], past: int = 0) -> np.ndarray:
        """Run prompt tokens on a slot that holds ``past`` tokens already (a long prompt goes
        in chunks: without ``last_rows`` the graph's logits cover every position, so one
        4k-token run would allocate 4k x vocab floats); the last position's logits [vocab]."""
        tokens = np.asarray([ids], np.int64)
        mask = np.ones((1, past + len(ids)), np.int64)
        # The last row twice: one row alone takes another kernel path in the quantized
        # products, and GenAI computes a prompt's logits with all its rows.
        rows = np.full(min(2, len(ids)), len(ids) - 1, np.int64)
        logits = self._run(slot, 1, tokens, mask, rows)
        last: np.ndarray = logits[0] if self.last_rows else logits[0, -1]
        return last

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """The first ``n`` cached positions of slot ``src`` into slot ``dst``, every layer."""
        for bufs in (self._keys, self._values):
            for buf in bufs:
                buf[dst, :, :n] = buf[src, :, :n]

    def decode(self, rows: int, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One step for slots 0..rows-1: ``tokens`` [rows] the next token of each, ``lengths``
        [rows] the tokens already cached in each (a free slot passes 0). Logits [rows, vocab],
        valid until the next step (one buffer, written in place)."""
        width = int(lengths.max()) + 1
        mask = (np.arange(width)[None, :] <= lengths[:, None]).astype(np.int64)
        out = self._decode_logits[:rows]
        ids = tokens.reshape(rows, 1).astype(np.int64)
        self._run(0, rows, ids, mask, np.arange(rows, dtype=np.int64), out)
        return out if self.last_rows else out[:, -1]

    def _run(
        self,
        first: int,
        rows: int,
        tokens: np.ndarray,
        mask: np.ndarray,
        last: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits in ``out`` when given (no ORT allocation, no output objects to wrap); with
        ``last_rows`` only the rows ``last`` (flat indices into rows x tokens)."""
        lay = self.layout
        io = self._binding(first, rows)
        io.bind_cpu_input(lay.input_ids, tokens)  # rebinding a name replaces it
        io.bind_cpu_input(lay.attention_mask, mask)
        if self.last_rows:
            io.bind_cpu_input(LAST_ROWS, last)
        if out is None:
            io.bind_output(lay.logits, "cpu")
        else:
            io.bind_output(lay.logits, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(io)
        if out is not None:
            return out
        logits: np.ndarray = io.get_outputs()[-1].numpy()
        return logits

    def _binding(self, first: int, rows: int) -> ort.IOBinding:
        """The binding of slots first..first+rows-1, made once: binding the 2 x layers cache
        tensors took ~1.7 ms a step in Python (SmolLM2, 30 layers), 15% of an int8 decode
        step on an idle core."""
        io = self._bindings.get((first, rows))
        if io is not None:
            return io
        lay = self.layout
        io = self.session.io_binding()
        shape = [rows, lay.kv_heads, self.max_len, lay.head_size]
        offset = first * self._row_bytes
        for i in range(lay.layers):
            for names, bufs in (
                ((lay.past_key, lay.present_key), self._keys),
                ((lay.past_value, lay.present_value), self._values),
            ):
                ptr = bufs[i].ctypes.data + offset
                # The same memory in and out: GroupQueryAttention appends in place.
                io.bind_input(names[0] % i, "cpu", 0, lay.kv_dtype, shape, ptr)
                io.bind_output(names[1] % i, "cpu", 0, lay.kv_dtype, shape, ptr)
        io.bind_output(lay.logits, "cpu")  # bound last: the last of get_outputs()
        self._bindings[(first, rows)] = io
        return io
