"""Weight-only quantization of a decoder LLM (MatMulNBits), streamed tensor by tensor.

The graph is read without its external data; each weight is read from the data file in slices
of whole quantization blocks (plain reads at its offset, no memory map that would stay resident),
quantized, and its MatMulNBits tensors appended to ``dst_dir/model.onnx.data`` before the next
weight is read. Peak memory is one slice plus one quantized weight, whatever the model's size.

What becomes of each initializer:
- the weight of a MatMul: MatMulNBits with ``bits`` (8 for the sensitive MatMuls of
  ``kquantMixed``: llama.cpp's choice, which ONNX Runtime GenAI's builder copies);
- the token embedding, ``embedding: int8 | int4``: GatherBlockQuantized. When it is the lm_head's
  weight read through a Transpose (tied, as the GenAI builder writes Llama), one quantized tensor
  serves both, as the builder does for int4: lm_head MatMulNBits and, through a Reshape, the
  GatherBlockQuantized; ``keep`` leaves the embedding's float tensor as it is;
- anything else: copied.

HQQ's zero points are floats; MatMulNBits takes float zero points but ONNX Runtime's CPU then
dequantizes the whole weight at every call (3 tokens/s on SmolLM2). They are stored instead as
fp16 block offsets beside a symmetric MatMulNBits: y = MatMulNBits(x) + blocksums(x) @ offsets,
the same weights exactly, on the fast kernels (about 0.7x the speed of plain symmetric int4).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxship.api import Quantize
from onnxship.compress.errors import InvalidModelError, InvalidSettingsError
from onnxship.compress.llm import kernels
from onnxship.compress.validate import check_external_data
from onnxship.store import Progress, no_progress

DATA = "model.onnx.data"
ALIGN = 4096
SLICE_BYTES = 16 << 20  # float32 read per slice of a weight
MS = "com.microsoft"
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
OFFSET_DTYPE = np.float16


@dataclass
class _Plan:
    matmul_bits: dict[str, int] = field(default_factory=dict)  # weight -> bits
    tied: str = ""  # lm_head weight also read (transposed) by the embedding Gather
    tied_transpose: str = ""  # that Transpose node's name
    gather: str = ""  # the embedding Gather node's name
    embedding: str = ""  # an untied embedding table
    notes: list[str] = field(default_factory=list)


def quantize_weight_only(
    src_model: Path,
    dst_dir: Path,
    q: Quantize,
    progress: Progress = no_progress,
    calibration: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Write ``dst_dir/model.onnx`` + ``model.onnx.data``: ``src_model`` with its MatMul weights
    (and embedding, per ``q.embedding``) block-quantized per ``q``. ``calibration`` (token ids
    per prompt) is read by ``algorithm: gptq`` only. Returns notes for the report. Other files
    of the folder (genai_config.json, tokenizer) are not copied."""
    src_model = Path(src_model)
    folder = src_model.parent
    try:
        model = onnx.load_model(str(src_model), load_external_data=False)
    except Exception as exc:
        raise InvalidModelError(f"{src_model.name}: not a readable ONNX model ({exc})") from None
    # untrusted paths stay inside the folder
    data_files = check_external_data(model, folder, src_model.name)
    block = q.block_size
    plan = _plan(model.graph, q)
    if not plan.matmul_bits:
        raise InvalidSettingsError(
            f"{src_model.name}: no MatMul with a constant float weight to quantize "
            "(quantize.mode weightOnly applies to decoder LLMs)"
        )
    hessians: dict[str, np.ndarray] = {}
    if q.algorithm == "gptq":
        if not calibration:
            raise InvalidSettingsError(
                "quantize.algorithm gptq calibrates on prompts: give spec.model.sampleInputs "
                "or choose rtn, kquant, kquantMixed or hqq"
            )
        from onnxship.compress.llm.calibrate import hessians_for

        hessians = hessians_for(src_model, model.graph, plan.matmul_bits, calibration, progress)

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    total = sum(_nbytes(t) for t in graph.initializer)
    done = 0
    new_inits: list[TensorProto] = []
    replaced: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes in its place
    matmuls = _consumers(graph, "MatMul")
    sums: dict[tuple[str, int], str] = {}  # block sums of an activation, shared by its MatMuls
    task = "quantize weights"
    progress(task, 0, total)
    with (dst_dir / DATA).open("wb") as out:
        writer = _Writer(out)
        for tensor in graph.initializer:
            name = tensor.name
            if name in plan.matmul_bits or name == plan.embedding:
                tied = name == plan.tied and q.embedding != "keep"
                if name == plan.embedding or tied:
                    bits, algorithm, symmetric = (8 if q.embedding == "int8" else 4), "rtn", True
                else:
                    bits, algorithm, symmetric = plan.matmul_bits[name], q.algorithm, q.symmetric
                if name == plan.tied and q.embedding == "keep":
                    new_inits.append(writer.copy(tensor, folder))  # the Gather reads it as is
                transposed = name == plan.embedding  # a Gather table [vocab, hidden]
                qw = _quantize(
                    tensor, folder, bits, block, algorithm, symmetric, transposed,
                    hessians.get(name),
                )
                inits = qw.write(writer, name, flat=transposed)
                new_inits.extend(inits)
                for node in matmuls.get(name, []):
                    replaced[node.name] = qw.matmul_nodes(node, inits, q.accuracy_level, sums)
                if tied:
                    replaced[plan.tied_transpose] = []
                    gather = _gather(graph, plan)
                    replaced[plan.gather] = qw.gather_nodes(plan.gather, gather, inits)
                if name == plan.embedding:
                    replaced[plan.gather] = qw.gather_nodes(
                        plan.gather, _gather(graph, plan), inits, reshape=False
                    )
            else:
                new_inits.append(writer.copy(tensor, folder))
            done += _nbytes(by_name[name])
            progress(task, done, total)

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.extend(replaced.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(_topological(nodes, graph))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    onnx.save_model(model, str(dst_dir / "model.onnx"))
    before = src_model.stat().st_size + sum((folder / f).stat().st_size for f in data_files)
    return plan.notes + _summary(q, plan, before, dst_dir)


# ------------------------------------------------------------------------------- the plan
def _consumers(graph: onnx.GraphProto, op: str) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == op and len(node.input) > 1:
            out.setdefault(node.input[1], []).append(node)
    return out


def _gather(graph: onnx.GraphProto, plan: _Plan) -> onnx.NodeProto:
    return next(n for n in graph.node if n.name == plan.gather)


def _plan(graph: onnx.GraphProto, q: Quantize) -> _Plan:
    plan = _Plan()
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    for node in graph.node:  # unnamed nodes cannot be replaced by name: name them
        if not node.name:
            node.name = f"/onnxship/{node.op_type}_{id(node)}"
    layers = _layer_count(graph)
    for name, tensor in inits.items():
        if tensor.data_type not in FLOATS or len(tensor.dims) != 2:
            continue
        use = uses.get(name, [])
        as_matmul = [n for n, i in use if n.op_type == "MatMul" and i == 1]
        others = [(n, i) for n, i in use if not (n.op_type == "MatMul" and i == 1)]
        if as_matmul and not others:
            plan.matmul_bits[name] = _bits(q, as_matmul[0].name, layers)
        elif as_matmul and len(others) == 1 and _is_tied(others[0], uses):
            plan.matmul_bits[name] = _bits(q, as_matmul[0].name, layers)
            plan.tied, plan.tied_transpose = name, others[0][0].name
            plan.gather = uses[others[0][0].output[0]][0][0].name
        elif (
            len(use) == 1
            and use[0][0].op_type == "Gather"
            and use[0][1] == 0
            and _axis(use[0][0]) == 0
            and q.embedding != "keep"
            and _size(tensor) > (_size(inits[plan.embedding]) if plan.embedding else 0)
        ):
            # the largest table is the vocabulary (an encoder also gathers positions, types)
            plan.embedding, plan.gather = name, use[0][0].name
    hidden = _hidden(inits, plan)
    if q.embedding != "keep" and (plan.tied or plan.embedding) and hidden % q.block_size:
        plan.notes.append(
            f"embedding kept in float: its width {hidden} is not a multiple of the block size "
            f"{q.block_size}"
        )
        plan.tied = plan.embedding = plan.gather = ""
    return plan


def _size(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _hidden(inits: dict[str, TensorProto], plan: _Plan) -> int:
    if plan.tied:
        return int(inits[plan.tied].dims[0])
    if plan.embedding:
        return int(inits[plan.embedding].dims[1])
    return 0


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _is_tied(use: tuple[onnx.NodeProto, int], uses: dict[str, list]) -> bool:
    node, _ = use
    if node.op_type != "Transpose":
        return False
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
    readers = uses.get(node.output[0], [])
    return (
        perm == [1, 0]
        and len(readers) == 1
        and readers[0][0].op_type == "Gather"
        and readers[0][1] == 0
        and _axis(readers[0][0]) == 0
    )


def _layer_count(graph: onnx.GraphProto) -> int:
    found = {_layer_of(n.name) for n in graph.node}
    found.discard(None)
    return max(found) + 1 if found else 0  # type: ignore[type-var]


def _layer_of(name: str) -> int | None:
    marker = "/layers."
    at = name.find(marker)
    if at < 0:
        return None
    digits = name[at + len(marker) :].split("/", 1)[0]
    return int(digits) if digits.isdigit() else None


def _bits(q: Quantize, node: str, layers: int) -> int:
    """kquantMixed: 8 bits for the lm_head and, in llama.cpp's sensitive layers (the first and
    last eighth, and every third between), for qkv/v and down projections."""
    if q.algorithm != "kquantMixed" or q.bits == 8:
        return q.bits
    if node.startswith("/lm_head"):
        return 8
    i = _layer_of(node)
    if i is None or not layers:
        return q.bits
    sensitive = i < layers / 8 or i >= 7 * layers / 8 or (i - round(layers / 8)) % 3 == 2
    if sensitive and any(p in node for p in ("qkv_proj", "v_proj", "down_proj")):
        return 8
    return q.bits


# ------------------------------------------------------------------------------ reading
def _nbytes(tensor: TensorProto) -> int:
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _location(tensor: TensorProto, folder: Path) -> tuple[Path, int]:
    info = {e.key: e.value for e in tensor.external_data}
    return folder / info["location"], int(info.get("offset", "0"))


def _rows(tensor: TensorProto, folder: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-D float initializer, as float32 (a plain read, no mmap)."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    cols = int(tensor.dims[1])
    if tensor.data_location == TensorProto.EXTERNAL:
        path, offset = _location(tensor, folder)
        with path.open("rb") as f:
            f.seek(offset + start * cols * dtype.itemsize)
            raw = f.read((stop - start) * cols * dtype.itemsize)
        rows = np.frombuffer(raw, dtype=dtype).reshape(stop - start, cols)
    else:
        rows = onnx.numpy_helper.to_array(tensor)[start:stop]
    return rows.astype(np.float32)


def _columns(tensor: TensorProto, folder: Path, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of a 2-D initializer read as its transpose (a Gather table
    [vocab, hidden] seen as the [hidden, vocab] weight of a MatMul)."""
    return np.ascontiguousarray(_rows(tensor, folder, start, stop).T)


# ----------------------------------------------------------------------------- quantizing
@dataclass
class _QuantizedWeight:
    k: int
    n: int
    bits: int
    block: int
    packed: np.ndarray  # [n, blocks, block*bits/8] uint8
    scales: np.ndarray  # [n, blocks]
    zero_points: np.ndarray | None  # [n, blocks] uint8 or float
    offsets: np.ndarray | None = None  # [n, blocks]: w = scale * (q - 2^(bits-1)) + offset

    def write(self, writer: _Writer, name: str, flat: bool = False) -> list[TensorProto]:
        """The tensors: codes, scales, then zero points or (fp16, [blocks, n]) block offsets."""
        # flat: [n, K*bits/8], the rows GatherBlockQuantized reads (same bytes)
        packed = self.packed.reshape(self.n, -1) if flat else self.packed
        out = [
            writer.array(f"{name}_Q{self.bits}", packed),
            writer.array(f"{name}_scales", self.scales),
        ]
        if self.zero_points is not None:
            zp = self.zero_points
            if zp.dtype == np.uint8:
                zp = kernels.pack_zero_points(zp, self.bits)
            out.append(writer.array(f"{name}_zero_points", zp))
        if self.offsets is not None:
            offsets = self.offsets.T.astype(OFFSET_DTYPE)
            out.append(writer.array(f"{name}_block_offsets", offsets))
        return out

    def matmul_nodes(
        self,
        node: onnx.NodeProto,
        inits: list[TensorProto],
        accuracy_level: int,
        sums: dict[tuple[str, int], str],
    ) -> list[onnx.NodeProto]:
        attrs = {"K": self.k, "N": self.n, "bits": self.bits, "block_size": self.block}
        if self.bits == 8:
            # ORT's CPU has a fast 8-bit kernel only with int8 compute: 2 ms instead of 92 ms
            # for SmolLM2's lm_head at accuracy level 0 or 1
            accuracy_level = 4
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        base = node.name + f"_Q{self.bits}"
        x, y = node.input[0], node.output[0]
        if self.offsets is None:
            return [
                helper.make_node(
                    "MatMulNBits", [x, *(t.name for t in inits)], [y], name=base, domain=MS, **attrs
                )
            ]
        # y = MatMulNBits(x) + (sums of x over each block) @ offsets: an exact float zero
        # point, on the fast symmetric kernels (MatMulNBits with float zero points dequantizes
        # the whole weight at every call on CPU: 3 tokens/s instead of 100+ on SmolLM2).
        nodes = [
            helper.make_node(
                "MatMulNBits", [x, inits[0].name, inits[1].name], [f"{base}/codes"],
                name=base, domain=MS, **attrs,
            )
        ]
        key = (x, self.block)
        if key not in sums:
            sums[key] = f"{base}/block_sums"
            shape, axes = f"{base}/blocks_shape", f"{base}/sum_axes"
            nodes += [
                _constant(shape, np.array([0, 0, -1, self.block], np.int64)),
                _constant(axes, np.array([-1], np.int64)),
                helper.make_node("Reshape", [x, shape], [f"{base}/blocks"], name=f"{base}/Reshape"),
                helper.make_node(
                    "ReduceSum", [f"{base}/blocks", axes], [sums[key]],
                    name=f"{base}/ReduceSum", keepdims=0,
                ),
            ]
        to = helper.np_dtype_to_tensor_dtype(self.scales.dtype)
        nodes += [
            helper.make_node(
                "Cast", [inits[2].name], [f"{base}/offsets"], name=f"{base}/Cast", to=to
            ),
            helper.make_node(
                "MatMul", [sums[key], f"{base}/offsets"], [f"{base}/offset_sum"],
                name=f"{base}/OffsetMatMul",
            ),
            helper.make_node(
                "Add", [f"{base}/codes", f"{base}/offset_sum"], [y], name=f"{base}/Add"
            ),
        ]
        return nodes

    def gather_nodes(
        self,
        name: str,
        gather: onnx.NodeProto,
        inits: list[TensorProto],
        reshape: bool = True,
    ) -> list[onnx.NodeProto]:
        # GatherBlockQuantized reads rows [vocab, hidden*bits/8]: the MatMulNBits bytes as they
        # are, through a Reshape when they are shared with the lm_head (the builder's layout).
        flat = self.k * self.bits // 8
        data = inits[0].name
        nodes: list[onnx.NodeProto] = []
        if reshape:
            shape = f"{name}/shape"
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [shape],
                    name=shape,
                    value=onnx.numpy_helper.from_array(np.array([self.n, flat], np.int64)),
                )
            )
            nodes.append(
                helper.make_node("Reshape", [data, shape], [f"{name}/data"], name=f"{name}/Reshape")
            )
            data = f"{name}/data"
        inputs = [data, gather.input[1], inits[1].name]
        if len(inits) > 2:
            inputs.append(inits[2].name)
        nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                inputs,
                list(gather.output),
                name=name + "BlockQuantized",
                domain=MS,
                bits=self.bits,
                block_size=self.block,
                gather_axis=0,
                quantize_axis=1,
            )
        )
        return nodes


def _quantize(
    tensor: TensorProto,
    folder: Path,
    bits: int,
    block: int,
    algorithm: str,
    symmetric: bool,
    transposed: bool,
    hessian: np.ndarray | None,
) -> _QuantizedWeight:
    rows, cols = int(tensor.dims[0]), int(tensor.dims[1])
    k, n = (cols, rows) if transposed else (rows, cols)
    blocks = -(-k // block)
    packed = np.empty((n, blocks, block * bits // 8), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zero_points: np.ndarray | None = None
    if algorithm == "gptq":
        w = kernels.pad_rows(_rows(tensor, folder, 0, rows), block)
        assert hessian is not None
        packed, scales, zero_points = kernels.gptq(w, hessian, bits, block, symmetric)
    elif transposed:  # a Gather table: read rows of it = columns of the weight
        step = max(1, SLICE_BYTES // (4 * cols))
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            w = kernels.pad_rows(_columns(tensor, folder, n0, n1), block)
            p, s, z = _kernel(w, bits, block, algorithm, symmetric)
            packed[n0:n1], scales[n0:n1] = p, s
            zero_points = _place(zero_points, z, (n, blocks), slice(n0, n1), slice(None))
    else:  # slices of whole blocks of rows (K), all columns
        step = max(block, SLICE_BYTES // (4 * cols) // block * block)
        for k0 in range(0, k, step):
            k1 = min(k, k0 + step)
            w = kernels.pad_rows(_rows(tensor, folder, k0, k1), block)
            p, s, z = _kernel(w, bits, block, algorithm, symmetric)
            b0, b1 = k0 // block, k0 // block + p.shape[1]
            packed[:, b0:b1], scales[:, b0:b1] = p, s
            zero_points = _place(zero_points, z, (n, blocks), slice(None), slice(b0, b1))
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    scales = scales.astype(dtype)  # MatMulNBits wants scales (and float zeros) of A's type
    offsets = None
    if zero_points is not None and zero_points.dtype != np.uint8:
        if k % block == 0 and not transposed:
            # float zero z: scale*(q - z) = scale*(q - mid) + scale*(mid - z)
            offsets = (scales * (2 ** (bits - 1) - zero_points)).astype(np.float32)
            zero_points = None
        else:
            zero_points = zero_points.astype(dtype)
    return _QuantizedWeight(k, n, bits, block, packed, scales, zero_points, offsets)


def _place(
    whole: np.ndarray | None,
    part: np.ndarray | None,
    shape: tuple[int, int],
    rows: slice,
    cols: slice,
) -> np.ndarray | None:
    if part is None:
        return whole
    if whole is None:
        whole = np.empty(shape, part.dtype)
    whole[rows, cols] = part
    return whole


def _kernel(
    w: np.ndarray, bits: int, block: int, algorithm: str, symmetric: bool
) -> kernels.Quantized:
    if algorithm in ("kquant", "kquantMixed"):
        return kernels.kquant(w, bits, block)
    if algorithm == "hqq":
        return kernels.hqq(w, bits, block)
    if bits == 8 and symmetric:
        return kernels.symmetric_int8(w, block)
    return kernels.rtn(w, bits, block, symmetric)


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=name, value=onnx.numpy_helper.from_array(value)
    )


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where each comes after its inputs' producers (the block sums shared by
    several MatMuls are made where the first of them was, which need not come first)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers = {o for n in nodes for o in n.output}
    pending, out = list(nodes), []
    while pending:
        left = []
        for node in pending:
            if all(i in ready or i not in producers for i in node.input):
                out.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            return out + left  # a cycle was there before us: leave it to the checker
        pending = left
    return out


# ------------------------------------------------------------------------------- writing
class _Writer:
    """Appends tensors to the output data file at aligned offsets."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def _entry(self, tensor: TensorProto, length: int) -> None:
        pad = (-self.out.tell()) % ALIGN
        if pad:
            self.out.write(b"\0" * pad)
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        offset = str(self.out.tell())
        for key, value in (("location", DATA), ("offset", offset), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def array(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        tensor = TensorProto(
            name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape
        )
        self._entry(tensor, array.nbytes)
        array.tofile(self.out)
        return tensor

    def copy(self, tensor: TensorProto, folder: Path) -> TensorProto:
        new = TensorProto()
        new.CopyFrom(tensor)
        if tensor.data_location != TensorProto.EXTERNAL:
            return new  # small inline tensors stay in the graph
        path, offset = _location(tensor, folder)
        length = _nbytes(tensor)
        self._entry(new, length)
        with path.open("rb") as f:
            f.seek(offset)
            _copy_bytes(f, self.out, length)
        return new


def _copy_bytes(src: BinaryIO, dst: BinaryIO, length: int) -> None:
    left = length
    while left:
        chunk = src.read(min(left, 8 << 20))
        if not chunk:
            raise InvalidModelError("the external data file ended early: truncated")
        dst.write(chunk)
        left -= len(chunk)


def _summary(q: Quantize, plan: _Plan, before: int, dst_dir: Path) -> list[str]:
    eight = sum(1 for b in plan.matmul_bits.values() if b == 8)
    grid = "symmetric" if q.symmetric else "asymmetric"
    if q.algorithm == "hqq":
        grid = "asymmetric, float zero points"
    elif q.algorithm in ("kquant", "kquantMixed"):
        grid = "scale and minimum per block"
    line = (
        f"weight-only {q.algorithm} {q.bits}-bit, block {q.block_size} ({grid}), "
        f"accuracy level {q.accuracy_level}: {len(plan.matmul_bits)} MatMul weights -> "
        "MatMulNBits"
    )
    if eight and q.bits == 4:
        line += f" ({eight} in 8 bits)"
    notes = [line]
    if plan.tied and q.embedding != "keep":
        notes.append(
            f"embedding {q.embedding}, shared with the tied lm_head (GatherBlockQuantized)"
        )
    elif plan.embedding:
        notes.append(f"embedding {q.embedding} (GatherBlockQuantized)")
    else:
        notes.append("embedding kept in float")
    after = sum((dst_dir / f).stat().st_size for f in ("model.onnx", DATA))
    notes.append(f"graph and weights {before:,} -> {after:,} bytes")
    return notes


def copy_companions(src_dir: Path, dst_dir: Path, skip: Iterable[str] = ()) -> None:
    """Copy the folder's other files (genai_config.json, tokenizer) beside a quantized graph:
    for tests and the bench; the compress pipeline's folder step does this for real."""
    graph = onnx.load_model(str(src_dir / "model.onnx"), load_external_data=False)
    data = {
        e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"
    }
    for path in src_dir.iterdir():
        if path.is_file() and path.name not in {"model.onnx", *data, *skip}:
            shutil.copyfile(path, dst_dir / path.name)



def llm_candidates() -> list[tuple[str, Quantize]]:
    """Weight-only variants for ``quantize: auto``, smallest first on a Llama-shaped model
    (SmolLM2: 112, 117 and 158 MB of 544): the first that passes the gate is the one to publish.
    4-bit HQQ (block 32, exact float block offsets), k-quant with the sensitive MatMuls in 8
    bits, then all 8 bits; the embedding (and a tied lm_head) in int8 throughout."""
    base = {"mode": "weightOnly", "block_size": 32, "embedding": "int8", "accuracy_level": 4}
    return [
        ("int4-hqq-b32-emb8", Quantize(**base, bits=4, algorithm="hqq", symmetric=False)),
        ("int4-kquantMixed-b32-emb8", Quantize(**base, bits=4, algorithm="kquantMixed")),
        ("int8-rtn-b32-emb8", Quantize(**base, bits=8, algorithm="rtn", symmetric=True)),
    ]
