"""PackWeightsPass: encode each shared weight as a record and rewrite its consumers to custom ops.

Rewrites (ops in domain ``ai.onnxcomp``, see docs/ops.md), for every node reading the weight:
- MatMul with a 2-D float32 weight on the right -> CodebookMatMul(X, record); also when the weight reaches the
  MatMul through Transpose (perm [1, 0]), Cast to float32 or Identity (select_weights.fused_route), which then
  become dead and are removed; an Add of a constant [N] vector that alone reads the product becomes its bias input
  (``fold_bias_adds``);
- Gemm (transA=0) with a constant B -> CodebookMatMul(A, record[, bias]) and, only where needed, Mul by
  alpha and Add of beta*C;
- Gather (axis 0) of a float32 table -> CodebookGather(record, indices);
- Conv with the float32 weight in slot 1 -> CodebookConv(X, record[, bias[, scale]]) with Conv's attributes; a
  BatchNormalization that alone reads the Conv's output is folded in (scale = gamma / sqrt(var + eps),
  bias = (B - mean) * scale + beta, the same folding onnxruntime applies to a dense Conv), then an Add of a constant
  that varies along the channel axis only (into the bias, as onnxruntime's ConvAddFusion; before it a Mul by such a
  constant, into scale and bias, as its ConvMulFusion), then an activation that alone reads the result (Relu, Tanh,
  Sigmoid, LeakyRelu, Clip with constant bounds, HardSigmoid, HardSwish, or HardSwish written out as
  ``x * Clip(x + 3, 0, 6) / 6``) becomes the node's ``activation`` attribute, as in onnxruntime's FusedConv (each
  found through Identity nodes); a scalar affine ``h * a + b`` of X read only by convolutions without padding folds
  into their scale and bias (``fold_input_affines``); tensors between
  CodebookConv nodes stay in onnxruntime's NCHWc layout where ``mark_blocked_edges`` proves it safe;
- LSTM (default activations, layout 0) reading the float32 weight as W, R or B -> CodebookLSTM with the record
  in that input (its other weights stay as they are, records or float32: lstm_fusable);
- any other reader (ConvTranspose, GRU, RNN, Einsum, a Slice, a float16 weight's consumers, ...) -> the output of ONE
  CodebookDecode(record) node per weight (plus a Transpose if stored transposed, plus a Cast back to the
  weight's float16/bfloat16 type), placed in the innermost graph enclosing all those readers (the main graph, an
  If branch, a Loop or Scan body), so a weight read by several subgraphs is decoded and stored once.
A CodebookMatMul whose X is a one-hot tensor (``Cast(Equal(ids, arange(K)))`` or ``OneHot``) then becomes a row
lookup, CodebookGather with attribute ``one_hot`` (passes/one_hot.py), before decode-once copies are assigned.
The record is stored transposed ([K, N] = W^T) when every reader fuses and each multiplies by W^T (Gemm with
transB=1, Transpose -> MatMul).

Decode-once working forms (``decode_once=1`` on CodebookDecode and CodebookMatMul, docs/ops.md): those kernels then
keep the weight decoded as float32 from their first run (CodebookDecode copies it out in each run instead of
decoding it; CodebookMatMul keeps it in dense panels of 16 columns, N padded, and multiplies with its dense-panel
kernel). The rule, per model: the working copies may
spend at most ``DECODE_ONCE_SHARE`` (half) of the bytes compression saved, ``(dense bytes - record bytes)`` summed
over the packed weights, so the compressed session keeps less persistent weight memory than the dense one
(records + working copies <= (dense + records) / 2 < dense). CodebookConv and CodebookLSTM always keep one working
copy per node and weight (their design), and those count first; then CodebookDecode nodes (decoded in every run otherwise: a copy is always
cheaper), then CodebookMatMul nodes, each group smallest first, while the total fits. Every generated name is unique in the model (passes/names.py). The record bytes
become a uint8 constant; the writer later moves it into the sidecar as external data.
Storage: a record costs its header and tables plus the Huffman-coded indices, against 4 (float32) or 2
(float16, bfloat16) bytes per weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp import progress
from onnxcomp.core import sidecar

from .base import DOMAIN, CompressionState, GraphPass, PassResult, WeightTarget, drop_if_not_smaller, log, read_values
from .fold_weights import fold_value
from .names import UniqueNames, all_graphs, common_graph, parents
from .select_weights import fusable_gemm

RECORD_SUFFIX = ".onnxcomp_record"
# A 1-D weight of at most this many elements that no reader fuses stays dense (see _small_and_decoded).
SMALL_DECODED_ELEMENTS = 4096
# Share of the bytes compression saves that decode-once working copies (and CodebookConv's) may spend.
DECODE_ONCE_SHARE = 0.5


def _attr(node: gs.Node, name: str, default):
    return node.attrs.get(name, default)


def stored_transposed(target: WeightTarget, fuse: bool = True) -> bool:
    """Store the record as W^T: every use fuses into a CodebookMatMul multiplying by W^T."""
    routes = target.routes or []
    if not fuse or len(target.shape) != 2 or not routes or any(r is None for r in routes):
        return False
    return {flipped for route in routes for _, flipped in route} == {True}


class PackWeightsPass(GraphPass):
    def __init__(self, *, fuse: bool = True) -> None:
        self.fuse = fuse

    def run(self, state: CompressionState) -> PassResult:
        targets = [t for t in state.targets if t.codebook is not None and not t.packed and not t.portable]
        owners = {id(node): graph for graph in all_graphs(state.graph) for node in graph.nodes}
        names, parent = UniqueNames(state.graph), parents(state.graph)
        traces = []  # logged after the loop: a log line must not land inside a progress bar
        self._emitted: list[tuple[gs.Node, WeightTarget]] = []  # (custom node, its weight)
        packed = []
        for target in progress.track(targets, "packing records"):
            self.encode(target)
            if self._small_and_decoded(target):
                reason = (f"a vector of {target.size} elements (at most {SMALL_DECODED_ELEMENTS}) would be read only through "
                          "CodebookDecode, which costs every run and hides the constant from onnxruntime's optimiser")
                log.info("left %s dense: %s", target.name, reason)
                state.targets.remove(target)
                state.skipped.append((target.name, reason))
            elif not drop_if_not_smaller(state, target, len(target.record)):
                traces.append(self._pack(state.graph, target, owners, parent, names))
                packed.append(target)
        for trace in traces:
            log.debug("%s", trace)
        if packed:
            from .one_hot import one_hot_lookups  # it reads this module's helpers

            log.debug("%s", one_hot_lookups(state.graph, self._emitted, names))
            log.debug("%s", fold_bias_adds(state.graph, self._emitted, state.graph_inputs, state.folded_biases))
            log.debug("%s", assign_decode_once(packed, self._emitted))
            joined = join_dense_convs(state.graph, self._emitted, names) if self.fuse else []
            log.debug("%s", fold_input_affines(state.graph, self._emitted + joined, names))
            log.debug("%s", mark_blocked_edges(state.graph, self._emitted + joined))
        if targets:
            state.graph.cleanup().toposort()
        return PassResult(bool(targets), f"packed {len(targets)} tensors")

    def encode(self, target: WeightTarget, release: bool = False) -> None:
        """Encode ``target``'s record (choosing its stored orientation); with ``release``, drop its indices and
        refit values too. Streaming compression has ShareWeightsPass call this as each weight is shared, so
        only one weight's arrays are alive at a time."""
        if target.record is not None:
            return
        target.transposed = stored_transposed(target, self.fuse)
        indices = target.indices.reshape(target.shape)
        dims = target.shape
        positions, values = target.outlier_positions, target.outlier_values
        if target.transposed:
            indices, dims = indices.T, dims[::-1]
            rows, columns = np.divmod(positions, target.shape[1])
            transposed = columns * target.shape[0] + rows
            order = np.argsort(transposed)
            positions, values = transposed[order], values[order]
        bits = max(1, int(np.ceil(np.log2(max(len(target.codebook), 2)))))
        axis = target.scale_axis if not target.transposed else len(dims) - 1 - target.scale_axis
        target.record = sidecar.encode_record(target.codebook, indices, dims, bits, positions, values,
                                              scales=target.scales, scale_axis=axis)
        del indices
        if release:
            target.release()

    def _pack(self, root: gs.Graph, target: WeightTarget, owners: dict[int, gs.Graph], parent: dict[int, gs.Graph],
              names: UniqueNames) -> str:
        """Rewrite ``target``'s readers; returns the line --verbose logs about it."""
        self.encode(target)
        target.packed = True
        target.record_name = names(target.name + RECORD_SUFFIX)
        record = gs.Constant(target.record_name, np.frombuffer(target.record, dtype=np.uint8))
        decoded = []  # (node, slot) reading the dense tensor
        routes = target.routes or [None] * len(target.uses)
        for (node, slot), route in zip(target.uses, routes):
            kind = self._reader(target, node, slot, route)
            if kind == "matmul":
                for consumer, _ in route:
                    self._to_matmul(owners.get(id(consumer), root), consumer, record, names)
                    self._emitted.append((consumer, target))
            elif kind == "conv":
                _to_conv(owners.get(id(node), root), node, record, tuple(int(d) for d in target.shape), names)
                self._emitted.append((node, target))
            elif kind == "gather":
                node.op, node.domain, node.attrs = "CodebookGather", DOMAIN, {}
                node.inputs = [record, node.inputs[1]]
            elif kind == "lstm":
                _to_lstm(node, slot, record)
                self._emitted.append((node, target))
            else:
                decoded.append((node, slot))
        if decoded:
            graph = common_graph([owners.get(id(node), root) for node, _ in decoded], parent, root)
            dense = self._decode_node(graph, target, record, names)
            self._emitted.append((dense_producer(dense), target))
            for node, slot in decoded:
                node.inputs[slot] = dense
        return (f"{target.name}: record {target.record_name}{' (stored transposed)' if target.transposed else ''}; "
                f"{len(target.uses) - len(decoded)} of {len(target.uses)} readers fused, {len(decoded)} read it decoded "
                f"({', '.join(sorted({node.op for node, _ in decoded})) or '-'})")

    def _reader(self, target: WeightTarget, node: gs.Node, slot: int, route) -> str:
        """How a reader of ``target`` (``node`` reading input ``slot``, its MatMul route or None) takes the record:
        "matmul", "conv", "gather" (fused custom ops) or "decode" (the dense tensor from CodebookDecode)."""
        if self.fuse and route is not None and all(flipped == target.transposed for _, flipped in route):
            return "matmul"
        if self.fuse and node.op == "Conv" and not node.domain and slot == 1 and len(target.shape) >= 3 \
                and not target.transposed and target.dtype == onnx.TensorProto.FLOAT:
            return "conv"
        if self.fuse and node.op == "Gather" and not node.domain and slot == 0 and _attr(node, "axis", 0) == 0 \
                and target.dtype == onnx.TensorProto.FLOAT:
            return "gather"
        if self.fuse and slot in (1, 2, 3) and target.dtype == onnx.TensorProto.FLOAT and not target.transposed \
                and lstm_fusable(node):
            return "lstm"
        return "decode"

    def _small_and_decoded(self, target: WeightTarget) -> bool:
        """True for a 1-D weight of at most SMALL_DECODED_ELEMENTS elements that every reader would read through
        CodebookDecode and that is a bias: added by an Add to a MatMul's or Gemm's output, or a Conv's bias input
        (other small vectors, such as a Gemm's C, stay compressed): its record saves at most 16 KiB, while the decode node runs in every run and hides a constant from onnxruntime's graph
        optimiser (no constant folding of what follows it, no bias fusions such as BiasGelu, no NCHWc path for a
        CodebookConv whose bias it would feed)."""
        if len(target.shape) != 1 or target.size > SMALL_DECODED_ELEMENTS or not target.uses:
            return False
        routes = target.routes or [None] * len(target.uses)
        if any(self._reader(target, node, slot, route) != "decode" for (node, slot), route in zip(target.uses, routes)):
            return False

        def bias_use(node: gs.Node, slot: int) -> bool:  # a Conv's bias, or an Add after a MatMul or Gemm
            if node.op in ("Conv", "CodebookConv"):  # (the Conv may have been rewritten already)
                return slot == 2
            if node.op != "Add" or node.domain or len(node.inputs) != 2:
                return False
            other = node.inputs[1 - slot]
            return len(other.inputs) == 1 and other.inputs[0].op in ("MatMul", "Gemm", "CodebookMatMul")

        return all(bias_use(node, slot) for node, slot in target.uses)

    @staticmethod
    def _decode_node(graph: gs.Graph, target: WeightTarget, record: gs.Constant, names: UniqueNames) -> gs.Variable:
        """CodebookDecode (float32, stored orientation) [-> Transpose] [-> Cast to the weight's type], placed first
        in ``graph`` (it reads only a constant); returns the tensor equal to the original weight."""
        name = target.name
        steps = []
        if target.transposed:
            steps.append(("Transpose", {"perm": [1, 0]}, np.float32))
        if target.dtype != onnx.TensorProto.FLOAT:
            steps.append(("Cast", {"to": target.dtype}, np.float16 if target.dtype == onnx.TensorProto.FLOAT16 else target.dtype))
        shape = list(target.shape[::-1]) if target.transposed else list(target.shape)
        current = gs.Variable(names(name + (".decoded_stored" if steps else ".decoded")), dtype=np.float32, shape=shape)
        nodes = [gs.Node("CodebookDecode", names(name + ".decode"), domain=DOMAIN, inputs=[record], outputs=[current])]
        for position, (op, attrs, dtype) in enumerate(steps):
            last = position == len(steps) - 1
            out = gs.Variable(names(name + (".decoded" if last else ".decoded_float")), dtype=dtype, shape=list(target.shape))
            nodes.append(gs.Node(op, names(f"{name}.{op.lower()}"), attrs=attrs, inputs=[current], outputs=[out]))
            current = out
        graph.nodes[0:0] = nodes
        return current

    @staticmethod
    def _to_matmul(graph: gs.Graph, node: gs.Node, record: gs.Constant, names: UniqueNames) -> None:
        """Turn MatMul or Gemm into CodebookMatMul, keeping Gemm's alpha, beta and C exact."""
        x = node.inputs[0]
        base = node.name or node.outputs[0].name
        if node.op == "MatMul":
            node.op, node.domain, node.attrs, node.inputs = "CodebookMatMul", DOMAIN, {}, [x, record]
            return
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        output = node.outputs[0]
        n_out = record_out_features(record)
        bias = None
        if c is not None and alpha == 1.0 and isinstance(c, gs.Constant) and tuple(c.shape) in ((n_out,), (1, n_out)) \
                and np.dtype(c.dtype) == np.float32:
            values = np.asarray(c.values, dtype=np.float32).reshape(n_out)
            bias = c if beta == 1.0 and tuple(c.shape) == (n_out,) else gs.Constant(
                names(base + ".bias"), (np.float32(beta) * values).astype(np.float32))
            c = None
        tail = []  # standard nodes applying alpha and beta*C after the product
        current = output
        if c is not None:
            product = gs.Variable(names(base + ".scaled"), dtype=np.float32)
            addend = c
            if beta != 1.0:
                addend = gs.Variable(names(base + ".beta_c"), dtype=np.float32)
                tail.append(gs.Node("Mul", names(base + ".beta"), inputs=[c, gs.Constant(names(base + ".beta_value"), np.array(beta, np.float32))], outputs=[addend]))
            tail.append(gs.Node("Add", names(base + ".add_c"), inputs=[product, addend], outputs=[current]))
            current = product
        if alpha != 1.0:
            product = gs.Variable(names(base + ".product"), dtype=np.float32)
            tail.append(gs.Node("Mul", names(base + ".alpha"), inputs=[product, gs.Constant(names(base + ".alpha_value"), np.array(alpha, np.float32))], outputs=[current]))
            current = product
        node.op, node.domain, node.attrs = "CodebookMatMul", DOMAIN, {}
        node.inputs = [x, record] + ([bias] if bias is not None else [])
        node.outputs = [current]
        graph.nodes.extend(tail)


def dense_producer(tensor: gs.Variable) -> gs.Node:
    """The CodebookDecode node at the start of the decode chain that produces ``tensor``."""
    node = tensor.inputs[0]
    while node.op != "CodebookDecode":
        node = node.inputs[0].inputs[0]
    return node


# Columns per panel of CodebookMatMul's decode-once working form (kDensePanelColumns in csrc/cpu/matmul_kernels.h):
# its copy holds N rounded up to a multiple of this.
DENSE_PANEL_COLUMNS = 16


def working_copy_bytes(node: gs.Node, target: WeightTarget) -> int:
    """Bytes of the float32 working copy ``node`` keeps of ``target``: 4 per element, and for CodebookMatMul's dense
    panels ([K, N] with N padded to DENSE_PANEL_COLUMNS) 4 per padded element."""
    if node.op != "CodebookMatMul":
        return 4 * target.size
    rows, columns = target.constant.shape
    k, n = (columns, rows) if target.transposed else (rows, columns)
    return 4 * k * (-(-n // DENSE_PANEL_COLUMNS) * DENSE_PANEL_COLUMNS)


def assign_decode_once(targets: list[WeightTarget], emitted: list[tuple[gs.Node, WeightTarget]]) -> str:
    """Sets ``decode_once=1`` on the CodebookDecode and CodebookMatMul nodes of ``emitted`` that the module
    docstring's rule grants (working_copy_bytes each); returns a log line."""
    saved = sum(t.dense_bytes - len(t.record) for t in targets)
    budget = DECODE_ONCE_SHARE * saved
    spent = sum(working_copy_bytes(node, t) for node, t in emitted if node.op in ("CodebookConv", "CodebookLSTM"))
    granted = {"CodebookDecode": 0, "CodebookMatMul": 0}
    for op in granted:
        for node, target in sorted((e for e in emitted if e[0].op == op), key=lambda e: working_copy_bytes(*e)):
            if spent + working_copy_bytes(node, target) <= budget:
                node.attrs["decode_once"] = 1
                spent += working_copy_bytes(node, target)
                granted[op] += 1
    return (f"decode-once working copies: {granted['CodebookDecode']} CodebookDecode, {granted['CodebookMatMul']} "
            f"CodebookMatMul; {spent} bytes with CodebookConv's, budget {budget:.0f} ({DECODE_ONCE_SHARE} of {saved} "
            "bytes saved)")


NCHWC_BLOCKS = (16, 8)  # the channel blocks of onnxruntime's NCHWc kernels (16 with AVX-512F, 8 with AVX2)


def _nchwc_layer(node: gs.Node, target: WeightTarget, block: int) -> tuple[bool, bool]:
    """(can write Y blocked, can read X blocked) for a CodebookConv node under a channel ``block``: whether the kernel
    takes the NCHWc path with a blocked input and a block-aligned output there, as docs/ops.md's rule says."""
    shape = target.shape
    if len(shape) != 4:
        return False, False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.name and not isinstance(bias, gs.Constant):
        return False, False
    out_channels, per_group, group = int(shape[0]), int(shape[1]), int(node.attrs.get("group", 1))
    if group == 1:
        reads = per_group % block == 0
        # fewer input channels than any block: NCHW input; a multiple of 4: X padded to the block (docs/ops.md)
        runs = reads or per_group < min(NCHWC_BLOCKS) or per_group % 4 == 0
    elif per_group == 1 and out_channels == group:  # depthwise
        reads = runs = out_channels % block == 0
    else:
        reads = runs = out_channels % block == 0 and per_group % block == 0 and (out_channels // group) % block == 0
    return runs and out_channels % block == 0, reads


# Ops that compute the same function on onnxruntime's NCHWc layout as on NCHW when every tensor they touch holds a
# whole number of channel blocks (the blocked tensor then has the NCHW tensor's shape, its elements permuted within
# each image): elementwise ops whose tensor inputs all have one shape (other inputs scalar constants), Concat and
# Split along the channel axis (each piece is a whole number of channel blocks).
BLOCKED_UNARY = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Softplus", "Neg", "Abs",
                 "Exp", "Erf", "Identity", "Clip")
BLOCKED_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")
# Ops the library also runs on blocked tensors (docs/ops.md): inside a blocked region they become the ai.onnxcomp op
# of the same name, with nchwc_input and nchwc_output set, as onnxruntime's NCHWc transformer converts them for a
# dense model (it cannot look through CodebookConv).
BLOCKED_SPATIAL = ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Resize")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def blocked_spatial(node: gs.Node) -> bool:
    """Whether a default-domain node of ``BLOCKED_SPATIAL`` has a form the library's blocked op runs: a 2-D MaxPool
    or AveragePool with explicit pads (auto_pad NOTSET) and no Indices output (storage_order 0), a global pool, or a
    Resize with mode nearest, coordinate_transformation_mode asymmetric, nearest_mode floor and constant integer
    scales [1, 1, sh, sw] (no sizes); the forms onnxruntime's NCHWc transformer converts."""
    if node.domain or node.op not in BLOCKED_SPATIAL or len(node.outputs) != 1 or not node.inputs:
        return False
    if node.op in ("GlobalMaxPool", "GlobalAveragePool"):
        return True
    if node.op == "Resize":
        if _text(_attr(node, "mode", "nearest")) != "nearest" or \
                _text(_attr(node, "coordinate_transformation_mode", "half_pixel")) != "asymmetric" or \
                _text(_attr(node, "nearest_mode", "round_prefer_floor")) != "floor":
            return False
        if len(node.inputs) not in (3, 4) or (len(node.inputs) == 4 and node.inputs[3].name) or \
                (node.inputs[1].name and _constant_array(node.inputs[1]) is None):
            return False
        scales = _constant_array(node.inputs[2]) if node.inputs[2].name else None
        if scales is None or scales.dtype != np.float32 or scales.shape != (4,):
            return False
        return bool(np.all(scales >= 1) and np.all(scales == np.floor(scales)) and np.all(scales[:2] == 1) and
                    np.all(scales <= 65536))
    kernel = list(_attr(node, "kernel_shape", []))
    return _text(_attr(node, "auto_pad", "NOTSET")) == "NOTSET" and len(kernel) == 2 and \
        int(_attr(node, "storage_order", 0)) == 0 and len(list(_attr(node, "pads", [0] * 4))) == 4 and \
        len(list(_attr(node, "strides", [1, 1]))) == 2 and len(list(_attr(node, "dilations", [1, 1]))) == 2


def _split_sizes(node: gs.Node, channels: int) -> list[int] | None:
    """Channel counts of a Split's outputs, or None when they are not known from constants."""
    count = len(node.outputs)
    if "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    elif len(node.inputs) > 1 and node.inputs[1].name:
        value = _constant_array(node.inputs[1])
        if value is None:
            return None
        sizes = [int(v) for v in value.reshape(-1)]
    elif "num_outputs" in node.attrs or count > 0:
        piece = -(-channels // count)  # opset 18 num_outputs: the last piece may be smaller
        sizes = [piece] * (count - 1) + [channels - piece * (count - 1)]
    else:
        return None
    return sizes if len(sizes) == count and sum(sizes) == channels else None


def _blocked_channels(node: gs.Node, channels: dict[str, int]) -> list[int] | None:
    """Channel counts of a layout-agnostic node's outputs given its tensor inputs' (``channels``), or None when the
    node cannot run on blocked tensors: a ``BLOCKED_UNARY`` / ``BLOCKED_BINARY`` op whose other inputs are scalar
    constants and whose tensor inputs have equal channel counts, Concat / Split on axis 1 of a rank-4 tensor, or a
    pool or Resize the library runs blocked (``blocked_spatial``; it keeps the channels)."""
    tensors = [t for t in node.inputs if t.name and _constant_array(t) is None]
    constants = [t for t in node.inputs if t.name and all(t is not u for u in tensors)]
    if node.domain or not tensors or any(t.name not in channels for t in tensors):
        return None
    counts = [channels[t.name] for t in tensors]
    if blocked_spatial(node):
        return counts[:1] if len(tensors) == 1 and node.inputs[0] is tensors[0] else None
    if node.op in BLOCKED_UNARY + BLOCKED_BINARY:
        if len(node.outputs) != 1 or len(set(counts)) != 1 or any(_constant_array(t).size != 1 for t in constants) or \
                (node.op in BLOCKED_UNARY and len(tensors) != 1) or (node.op == "Clip" and node.inputs[0] is not tensors[0]):
            return None
        return counts[:1]
    axis = int(_attr(node, "axis", 0))
    if node.op == "Concat" and axis in (1, -3) and not constants:
        return [sum(counts)]
    if node.op == "Split" and axis in (1, -3) and len(tensors) == 1 and node.inputs[0] is tensors[0]:
        return _split_sizes(node, counts[0])
    return None


def _keeps_spatial(node: gs.Node, kernel: tuple[int, ...] | None) -> bool:
    """Whether a Conv (or CodebookConv) with ``kernel`` (spatial kernel dims, None: unknown) writes the spatial
    dims it reads: stride 1 on every axis, and SAME padding or pads adding up to dilation * (kernel - 1)."""
    if kernel is None:
        return False
    spatial = len(kernel)
    strides = [int(v) for v in _attr(node, "strides", [1] * spatial)]
    dilations = [int(v) for v in _attr(node, "dilations", [1] * spatial)]
    pads = [int(v) for v in _attr(node, "pads", [0] * 2 * spatial)]
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if any(s != 1 for s in strides) or len(dilations) != spatial or len(pads) != 2 * spatial:
        return False
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return auto_pad in ("NOTSET", "") and all(
        pads[i] + pads[i + spatial] == dilations[i] * (kernel[i] - 1) for i in range(spatial))


class SpatialKeys:
    """A key per tensor such that two tensors with equal keys (and equal channel counts) surely have one shape:
    N and the spatial dims pass unchanged through elementwise ops of one shape (others scalar constants), Concat and
    Split along the channels, and convolutions that keep the spatial dims (``_keeps_spatial``); anything else starts
    a new key (the tensor itself)."""

    def __init__(self, kernels: dict[int, tuple[int, ...]]) -> None:
        self.kernels = kernels  # id(CodebookConv node) -> spatial kernel dims
        self.memo: dict[int, int] = {}

    def __call__(self, t: gs.Variable) -> int:
        key = self.memo.get(id(t))
        if key is None:
            key = self.memo[id(t)] = self._key(t)
        return key

    def _key(self, t: gs.Variable) -> int:
        if len(t.inputs) != 1 or t.inputs[0].domain not in (None, "", DOMAIN):
            return id(t)
        node = t.inputs[0]
        tensors = [u for u in node.inputs if u.name and _constant_array(u) is None]
        if node.op in ("Conv", "CodebookConv") and tensors and node.inputs[0] is tensors[0]:
            kernel = self.kernels.get(id(node)) if node.op == "CodebookConv" else None
            if node.op == "Conv":
                shape = node.inputs[1].shape if len(node.inputs) > 1 else None
                kernel = tuple(_attr(node, "kernel_shape", ())) or (tuple(shape[2:]) if shape and all(
                    isinstance(d, int) for d in shape[2:]) else None)
            return self(tensors[0]) if _keeps_spatial(node, kernel) else id(t)
        if node.op in BLOCKED_UNARY + BLOCKED_BINARY and tensors and len(node.outputs) == 1 and all(
                _constant_array(u).size == 1 for u in node.inputs if u.name and all(u is not v for v in tensors)):
            keys = {self(u) for u in tensors}
            return keys.pop() if len(keys) == 1 else id(t)
        if node.op in ("Concat", "Split") and int(_attr(node, "axis", 0)) in (1, -3) and tensors:
            keys = {self(u) for u in tensors}
            return keys.pop() if len(keys) == 1 else id(t)
        return id(t)


def mark_blocked_edges(root: gs.Graph, emitted: list[tuple[gs.Node, WeightTarget]]) -> str:
    """Keeps activations in onnxruntime's NCHWc layout between CodebookConv nodes, as onnxruntime's own NCHWc
    transformer keeps a dense model's convolutions and the elementwise ops between them blocked: finds the blocked
    region (``_blocked_region``) under a channel block of 16 and under one of 8. A tensor of the first (a subset of
    the second) gets ``nchwc_output=1`` on its CodebookConv writer and ``nchwc_input=1`` on its CodebookConv
    readers (blocked on every CPU with NCHWc kernels), one only of the second gets 2 (blocked where the block is 8,
    NCHW where it is 16: both ends and every node between decide alike from the CPU's block); its declared shape is
    dropped (it holds the channels blocked). A pool or Resize inside a region (``blocked_spatial``) becomes the
    ai.onnxcomp op of its name with ``nchwc_input`` = ``nchwc_output`` = its tensors' value. Returns a log line."""
    wide = _blocked_region(root, emitted, max(NCHWC_BLOCKS))
    narrow = _blocked_region(root, emitted, min(NCHWC_BLOCKS))
    narrow.update(wide)  # every layer and tensor that qualifies at 16 qualifies at 8; kept explicit
    for name, t in narrow.items():
        value = 1 if name in wide else 2
        if t.inputs[0].op == "CodebookConv":
            t.inputs[0].attrs["nchwc_output"] = value
        elif blocked_spatial(t.inputs[0]):  # inside the region: its input is blocked alike
            t.inputs[0].domain = DOMAIN
            t.inputs[0].attrs["nchwc_input"] = t.inputs[0].attrs["nchwc_output"] = value
        for consumer in t.outputs:
            if consumer.op == "CodebookConv":
                consumer.attrs["nchwc_input"] = value
        t.shape = None
    return (f"NCHWc layout kept on {len(wide)} tensors between CodebookConv nodes under every channel block, "
            f"{len(narrow) - len(wide)} more under blocks of 8")


def _blocked_region(root: gs.Graph, emitted: list[tuple[gs.Node, WeightTarget]], block: int) -> dict[str, gs.Variable]:
    """The tensors (by name) that can stay in onnxruntime's NCHWc layout under a channel ``block``: each written by a
    CodebookConv that can write Y blocked (``_nchwc_layer``) or by a layout-agnostic node (``_blocked_channels``:
    elementwise ops such as x * Sigmoid(x) or a residual Add of equal shapes, Concat or Split along the channels),
    read only by CodebookConv nodes as X that can read it blocked or by such nodes, no graph output, with a multiple
    of ``block`` channels; an agnostic node is inside only when all its tensor inputs and outputs are (the largest
    such set, found by removing violators until none is left)."""
    layers = {id(node): _nchwc_layer(node, target, block) for node, target in emitted if node.op == "CodebookConv"}
    out_channels = {id(node): int(target.shape[0]) for node, target in emitted if node.op == "CodebookConv"}
    spatial_key = SpatialKeys({id(node): tuple(int(d) for d in target.shape[2:])
                               for node, target in emitted if node.op == "CodebookConv"})
    readers: dict[str, int] = {}
    outputs = set()
    for graph in all_graphs(root):
        outputs.update(t.name for t in graph.outputs)
        for node in graph.nodes:
            for tensor in node.inputs:
                readers[tensor.name] = readers.get(tensor.name, 0) + 1
    # Channel counts, forward from the CodebookConv writers through layout-agnostic nodes, graph by graph in order.
    channels: dict[str, int] = {}
    agnostic: list[gs.Node] = []
    for graph in all_graphs(root):
        for node in graph.nodes:
            if layers.get(id(node), (False, False))[0]:
                channels[node.outputs[0].name] = out_channels[id(node)]
            elif node.op != "CodebookConv":
                counts = _blocked_channels(node, channels)
                if counts is not None:
                    agnostic.append(node)
                    channels.update((t.name, c) for t, c in zip(node.outputs, counts))
    tensors = {}
    for graph in all_graphs(root):
        for node in graph.nodes:
            for t in node.outputs:
                if t.name in channels and channels[t.name] % block == 0 and t.name not in outputs and \
                        readers.get(t.name, 0) == len(t.outputs):
                    tensors[t.name] = t
    inside = set(id(n) for n in agnostic)

    def reads_blocked(consumer: gs.Node, t: gs.Variable) -> bool:
        if consumer.op == "CodebookConv" and consumer.domain == DOMAIN:
            return consumer.inputs[0] is t and sum(u is t for u in consumer.inputs) == 1 and \
                layers.get(id(consumer), (False, False))[1]
        return id(consumer) in inside

    changed = True
    while changed:
        changed = False
        for node in agnostic:
            if id(node) not in inside:
                continue
            data = [t for t in node.inputs if t.name in channels and _constant_array(t) is None]
            ok = all(t.name in tensors for t in data + list(node.outputs)) and \
                (node.op not in BLOCKED_BINARY or len({spatial_key(t) for t in data}) == 1)
            if not ok:
                inside.discard(id(node))
                changed = True
        for name, t in list(tensors.items()):
            producer = t.inputs[0]
            if (producer.op != "CodebookConv" and id(producer) not in inside) or \
                    not all(reads_blocked(c, t) for c in t.outputs):
                del tensors[name]
                changed = True
    return tensors


CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def explicit_conv_attributes(attrs: dict, weight_shape: tuple[int, ...]) -> dict:
    """The Conv attributes of ``attrs`` that CodebookConv needs written: those of CONV_ATTRIBUTES whose value differs
    from what ONNX Conv (and CodebookConv, docs/ops.md: the same defaults) takes when the attribute is absent:
    ``auto_pad`` NOTSET, ``group`` 1, ``dilations`` and ``strides`` all 1, ``pads`` all 0, ``kernel_shape`` the weight's
    spatial dims (``weight_shape`` [O, I/group, k1, ...]). Exporters write the defaults out (PyTorch writes all six
    on every Conv): 5.1 kB of YOLOv8n's compressed model file (docs/benchmarks.md, branch ratio4)."""
    spatial = len(weight_shape) - 2
    implied = {"auto_pad": "NOTSET", "group": 1, "dilations": [1] * spatial, "strides": [1] * spatial,
               "pads": [0] * (2 * spatial), "kernel_shape": [int(d) for d in weight_shape[2:]]}
    explicit = {}
    for name, value in attrs.items():
        if name not in CONV_ATTRIBUTES:
            continue
        plain = value.decode() if isinstance(value, bytes) else value
        if isinstance(plain, (list, tuple, np.ndarray)):
            plain = [int(v) for v in plain]
        if plain != implied[name]:
            explicit[name] = value
    return explicit


# Ops that may sit between two convolutions of one blocked region (``join_dense_convs``'s components).
REGION_OPS = BLOCKED_UNARY + BLOCKED_BINARY + ("Concat", "Split", "BatchNormalization")


class DenseConvWeight:
    """The weight of a Conv that ``join_dense_convs`` turned into a CodebookConv with its dense weight: what
    ``mark_blocked_edges`` reads of a WeightTarget (its shape)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _dense_conv_weight(node: gs.Node) -> DenseConvWeight | None:
    """The weight of a 2-D Conv (default domain) that CodebookConv can run with its dense weight, or None: a float32
    constant [O, I/group, kh, kw], a constant bias or none, and channel counts that take onnxruntime's NCHWc
    convolution under some channel block (``_nchwc_layer``; elsewhere joining would gain nothing)."""
    if node.op != "Conv" or node.domain or len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    w = node.inputs[1]
    if not isinstance(w, gs.Constant) or w.dtype != np.float32 or len(w.shape) != 4:
        return None
    weight = DenseConvWeight(tuple(int(d) for d in w.shape))
    if not any(any(_nchwc_layer(node, weight, block)) for block in NCHWC_BLOCKS):
        return None
    return weight


def join_dense_convs(root: gs.Graph, emitted: list[tuple[gs.Node, WeightTarget]],
                     names: UniqueNames) -> list[tuple[gs.Node, DenseConvWeight]]:
    """Turns the dense 2-D Conv nodes (the weights the allocation left dense) that share a region with a CodebookConv
    into CodebookConv nodes reading their dense weight (docs/ops.md), folding BatchNormalization, a bias Add and the
    activation as ``_to_conv`` does for a record, so ``mark_blocked_edges`` can keep the tensors between them and the
    CodebookConv nodes in onnxruntime's NCHWc layout. Without this, each dense Conv between two CodebookConv nodes
    costs a reorder out of the blocked layout and one back in on each side (onnxruntime's NCHWc transformer cannot
    see through the custom op). A region: convolutions connected through the ops of REGION_OPS (default domain),
    as union-find components over the tensors they exchange; a Conv is joined only when its component holds a
    CodebookConv. The weight and its values are unchanged (the writer later stores it as float16 where half_dense's
    rule allows, which CodebookConv reads as it is). Returns the joined (node, weight) pairs."""
    parent: dict[int, int] = {}

    def find(key: int) -> int:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    codebook = {id(node) for node, _ in emitted if node.op == "CodebookConv"}
    candidates: list[tuple[gs.Graph, gs.Node, DenseConvWeight]] = []
    members = set(codebook)  # the nodes a region may hold
    for graph in all_graphs(root):
        for node in graph.nodes:
            weight = _dense_conv_weight(node) if node.op == "Conv" else None
            if weight is not None:
                candidates.append((graph, node, weight))
            elif id(node) not in codebook and (node.domain or node.op not in REGION_OPS):
                continue
            members.add(id(node))
            for tensor in node.inputs:
                producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
                if producer is not None and id(producer) in members:
                    parent[find(id(node))] = find(id(producer))
    regions = {find(key) for key in codebook}
    joined = []
    for graph, node, weight in candidates:
        if find(id(node)) in regions:
            _to_conv(graph, node, node.inputs[1], weight.shape, names)
            joined.append((node, weight))
    return joined


def _scalar_operand(node: gs.Node) -> tuple[gs.Variable, float] | None:
    """(tensor input, value) of a Mul or Add (default domain) of one tensor and a float32 constant of one element."""
    if node.domain or node.op not in ("Mul", "Add") or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    for tensor, other in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        value = _constant_array(other)
        if (isinstance(tensor, gs.Variable) and _constant_array(tensor) is None and value is not None
                and value.dtype == np.float32 and value.size == 1):
            return tensor, float(value.reshape(()))
    return None


def _unpadded_conv(node: gs.Node) -> bool:
    """Whether ``node`` is a CodebookConv that reads no padding (auto_pad NOTSET or VALID, every pad 0) with a
    constant bias or none and a constant scale or none: the convolutions a scalar affine of X folds into exactly."""
    if node.op != "CodebookConv" or node.domain != DOMAIN:
        return False
    if _text(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID") or any(node.attrs.get("pads", [])):
        return False
    return all(not t.name or _constant_array(t) is not None for t in node.inputs[2:4])


def _conv_weight_values(node: gs.Node) -> np.ndarray | None:
    """CodebookConv's weight W as float32 ([O, I/group, k...]): its record decoded, or its dense weight."""
    weight = node.inputs[1]
    if not isinstance(weight, gs.Constant):
        return None
    values = np.asarray(read_values(weight))
    if values.dtype == np.uint8:
        return sidecar.decode_record_fast(values.tobytes()).to_dense().astype(np.float32)
    return values.astype(np.float32)


def _affine_chain(t: gs.Variable, outputs: set[int]) -> tuple[gs.Variable, float, float] | None:
    """(h, a, b) with ``t = h * a + b`` computed by a Mul and an Add of float32 scalar constants (either alone, in
    either order: ``(h + v) * m = h * m + v * m``), the tensor between them read by the second alone and not a graph
    output; else None."""
    def step(tensor: gs.Variable):
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        operand = _scalar_operand(producer) if producer is not None else None
        return (producer.op, operand[0], operand[1]) if operand is not None else None

    first = step(t)
    if first is None:
        return None
    op, h, value = first
    a, b = (value, 0.0) if op == "Mul" else (1.0, value)
    second = step(h) if len(h.outputs) == 1 and id(h) not in outputs else None
    if second is not None and second[0] != op:
        inner, h, value = second
        if inner == "Mul":  # (h * m) + b
            a = value
        else:  # (h + v) * a
            b = value * a
    if not (np.isfinite(a) and np.isfinite(b)):
        return None
    return h, a, b


def fold_input_affines(root: gs.Graph, emitted: list[tuple[gs.Node, object]], names: UniqueNames) -> str:
    """Folds ``t = h * a + b`` (a Mul and an Add of float32 scalar constants, either alone; PaddleOCR's learnable
    affine block after an activation) into the CodebookConv nodes that read t, when every reader of t is one that
    reads no padding (``_unpadded_conv``: 1x1 convolutions, and VALID ones): with X = h * a + b and zero padding
    absent, ``Conv(X, W * s) + c = Conv(h, W * (s * a)) + (c + b * sum(W[o] * s[o]))`` exactly in real arithmetic
    (each output sums W over its whole window, every position of which reads X), so the reader's scale becomes
    ``s * a`` and its bias ``c + b * s[o] * sum(W[o])`` (the sum over the decoded weight in float64, rounded once
    to float32; for a joined dense weight that the writer later stores as float16, over its float32 values, which
    differ from the stored ones by that rounding, as Conv(h, W) itself does). A convolution that pads reads zeros at
    the border where the affine would give b, so those keep the nodes (the dense model runs them too: onnxruntime
    folds a Mul or Add into the Conv before it, not after an activation). Returns the line --verbose logs."""
    readers = [node for node, _ in emitted if node.op == "CodebookConv"]
    inputs = {}
    for node in readers:
        inputs.setdefault(id(node.inputs[0]), node.inputs[0])
    outputs = {id(t) for graph in all_graphs(root) for t in graph.outputs}
    folded = 0
    for t in inputs.values():
        if not isinstance(t, gs.Variable) or len(t.inputs) != 1 or id(t) in outputs or not t.outputs:
            continue
        if not all(_unpadded_conv(r) and r.inputs[0] is t and all(x is not t for x in r.inputs[1:]) for r in t.outputs):
            continue
        affine = _affine_chain(t, outputs)
        if affine is None:
            continue
        h, a, b = affine
        weights = [_conv_weight_values(reader) for reader in t.outputs]
        if any(w is None for w in weights):
            continue
        for reader, w in zip(list(t.outputs), weights):
            o = w.shape[0]
            scale = _constant_array(reader.inputs[3]) if len(reader.inputs) > 3 and reader.inputs[3].name else None
            s = np.ones(o, np.float32) if scale is None else np.broadcast_to(scale.astype(np.float32), (o,))
            bias = _constant_array(reader.inputs[2]) if len(reader.inputs) > 2 and reader.inputs[2].name else None
            c = np.zeros(o, np.float32) if bias is None else bias.astype(np.float32)
            sums = (w.reshape(o, -1).astype(np.float64) * s.astype(np.float64)[:, None]).sum(axis=1)
            new_bias = (c.astype(np.float64) + b * sums).astype(np.float32)
            new_scale = (np.float32(a) * (np.float32(1.0) if scale is None else scale.astype(np.float32))).astype(np.float32)
            inputs_now = list(reader.inputs) + [gs.Variable.empty()] * (4 - len(reader.inputs))
            inputs_now[0] = h
            if b != 0.0:
                inputs_now[2] = gs.Constant(names((reader.name or "conv") + ".bias"), new_bias)
            if a != 1.0:
                inputs_now[3] = gs.Constant(names((reader.name or "conv") + ".scale"), new_scale.reshape(-1))
            while len(inputs_now) > 2 and not inputs_now[-1].name:
                inputs_now.pop()
            reader.inputs = inputs_now
            folded += 1
    return f"folded a scalar affine of X into {folded} CodebookConv nodes that read no padding"


def _constant_array(tensor) -> np.ndarray | None:
    """The values of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(read_values(tensor))
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(read_values(value))
    return None


# The small subgraphs exporters write for a broadcast bias, which onnxruntime's constant folding evaluates.
BIAS_CHAIN_OPS = ("Identity", "Reshape", "Unsqueeze", "Cast")


def _sole_consumer(graph: gs.Graph, tensor: gs.Variable, ops: tuple[str, ...]) -> tuple[gs.Node, gs.Variable] | None:
    """(node, the tensor it reads) for the one node of ``ops`` (default domain) that alone reads ``tensor``, directly
    or through a chain of Identity nodes (removed by onnxruntime before its fusions), none of whose tensors is a
    graph output; else None. Identity nodes left without a reader are removed by the pass's cleanup."""
    for _ in range(8):
        if len(tensor.outputs) != 1 or any(tensor is out for out in graph.outputs):
            return None
        node = tensor.outputs[0]
        if node.op == "Identity" and not node.domain and len(node.outputs) == 1:
            tensor = node.outputs[0]
            continue
        return (node, tensor) if node.op in ops and not node.domain and len(node.outputs) >= 1 else None
    return None


def _fold_batch_norm(node: gs.Node, out_channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with BN(y) = y * scale + shift per channel, or None when BN's parameters are not constant."""
    if len(node.inputs) != 5 or int(_attr(node, "training_mode", 0)) != 0 or len([o for o in node.outputs if o.name]) != 1:
        return None
    gamma, beta, mean, var = (_constant_array(t) for t in node.inputs[1:])
    if any(v is None or v.shape != (out_channels,) for v in (gamma, beta, mean, var)):
        return None
    epsilon = np.float32(_attr(node, "epsilon", 1e-5))
    scale = (gamma.astype(np.float32) / np.sqrt(var.astype(np.float32) + epsilon)).astype(np.float32)
    return scale, (beta.astype(np.float32) - mean.astype(np.float32) * scale).astype(np.float32)


def _channel_constant(add: gs.Node, conv_output: gs.Variable, out_channels: int, rank: int) -> np.ndarray | None:
    """The per-output-channel float32 values [O] that ``add`` (an Add reading ``conv_output``, of rank ``rank``)
    adds when its other input is a constant that broadcasts along the channel axis only (shape [1, O, 1, 1],
    [O, 1, 1], a scalar, ...): the Add then folds into the convolution's bias, as onnxruntime's ConvAddFusion
    folds it for a dense Conv. None when it does not qualify."""
    if len(add.inputs) != 2 or sum(t is conv_output for t in add.inputs) != 1:
        return None
    other = add.inputs[1] if add.inputs[0] is conv_output else add.inputs[0]
    value = fold_value(other, set(), depth=4, ops=BIAS_CHAIN_OPS)  # a constant, or a Reshape/Unsqueeze/Cast of one
    if value is None or value.dtype != np.float32 or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape  # right-aligned against [N, O, D1, ...]
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, out_channels):
        return None
    return np.broadcast_to(value.reshape(-1), (out_channels,)).astype(np.float32)


def _activation(node: gs.Node) -> tuple[str, list[float]] | None:
    """(activation, activation_params) of FusedConv for an activation node, or None when it does not qualify."""
    if node.op in ("Relu", "Tanh", "Sigmoid", "HardSwish"):
        return node.op, []
    if node.op == "LeakyRelu":
        return "LeakyRelu", [float(_attr(node, "alpha", 0.01))]
    if node.op == "HardSigmoid":
        return "HardSigmoid", [float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))]
    if node.op == "Clip":
        bounds = [float(_attr(node, "min", np.finfo(np.float32).min)), float(_attr(node, "max", np.finfo(np.float32).max))]
        for i, tensor in enumerate(node.inputs[1:3]):
            if not tensor.name:
                continue
            value = _constant_array(tensor)
            if value is None or value.size != 1:
                return None
            bounds[i] = float(value.reshape(()))
        return "Clip", bounds
    return None


def _scalar_constant(tensor, value: float) -> bool:
    """Whether ``tensor`` is a float32 constant of one element equal to ``value``."""
    array = _constant_array(tensor)
    return array is not None and array.dtype == np.float32 and array.size == 1 and float(array.reshape(())) == value


def _scaled_by_one_sixth(node: gs.Node, tensor: gs.Variable) -> bool:
    """Whether ``node`` computes ``tensor / 6`` (a Div by the constant 6, or a Mul by float32(1/6))."""
    if len(node.inputs) != 2 or sum(t is tensor for t in node.inputs) != 1:
        return False
    other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0]
    if node.op == "Div":
        return node.inputs[0] is tensor and _scalar_constant(other, 6.0)
    return node.op == "Mul" and _scalar_constant(other, float(np.float32(1.0 / 6.0)))


def _decomposed_hard_swish(graph: gs.Graph, x: gs.Variable) -> tuple[list[gs.Node], gs.Variable] | None:
    """(nodes, output) of HardSwish(x) written out as ``x * Clip(x + 3, 0, 6) / 6`` (the division by 6, or a Mul by
    1/6, before or after the product with x; as PaddleOCR's MobileNetV3 exports it), when its two first nodes alone
    read ``x`` and each later tensor has one reader and is no graph output; else None. HardSwish(x) = x * max(0,
    min(1, x / 6 + 1 / 2)) (ONNX), the same function up to fp32 rounding, so it folds into CodebookConv's
    ``activation`` as onnxruntime's FusedConv HardSwish, which onnxruntime's own fusions do not do for the
    written-out form (the dense model runs the four nodes)."""
    readers = list(x.outputs)
    if len(readers) != 2 or any(x is out for out in graph.outputs) or any(n.domain for n in readers):
        return None
    add = next((n for n in readers if n.op == "Add"), None)
    product = next((n for n in readers if n.op == "Mul"), None)
    if add is None or product is None or len(add.inputs) != 2 or len(product.inputs) != 2:
        return None
    if sum(t is x for t in add.inputs) != 1 or not _scalar_constant(add.inputs[1] if add.inputs[0] is x else add.inputs[0], 3.0):
        return None
    clip, clip_input = _sole_consumer(graph, add.outputs[0], ("Clip",)) or (None, None)
    if clip is None or clip.inputs[0] is not clip_input or _activation(clip) != ("Clip", [0.0, 6.0]):
        return None
    step, step_input = _sole_consumer(graph, clip.outputs[0], ("Mul", "Div")) or (None, None)
    if step is None:
        return None
    if step is product:  # (x * Clip(x + 3)) / 6
        last, last_input = _sole_consumer(graph, product.outputs[0], ("Mul", "Div")) or (None, None)
        if last is None or not _scaled_by_one_sixth(last, last_input):
            return None
        nodes = [add, clip, product, last]
    else:  # x * (Clip(x + 3) / 6)
        if not _scaled_by_one_sixth(step, step_input):
            return None
        last, last_input = _sole_consumer(graph, step.outputs[0], ("Mul",)) or (None, None)
        if last is not product:
            return None
        nodes = [add, clip, step, product]
    if sum(t is x for t in product.inputs) != 1 or len(last.outputs) != 1:
        return None
    return nodes, last.outputs[0]


def _to_conv(graph: gs.Graph, node: gs.Node, record: gs.Constant, weight_shape: tuple[int, ...],
             names: UniqueNames) -> None:
    """Turn Conv(X, W[, B]) into CodebookConv(X, record[, bias[, scale]]) for W of ``weight_shape`` (``record``:
    its record, or W itself for ``join_dense_convs``), folding a
    following BatchNormalization, then a Mul and an Add of a per-channel constant, then an activation into it (see
    the module docstring)."""
    out_channels = weight_shape[0]
    attrs = explicit_conv_attributes(node.attrs, weight_shape)
    inputs = [node.inputs[0], record]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    output = node.outputs[0]
    scale = None
    norm, _ = _sole_consumer(graph, output, ("BatchNormalization",)) or (None, None)
    folded = _fold_batch_norm(norm, out_channels) if norm is not None else None
    bias_values = _constant_array(bias) if bias is not None else np.zeros(out_channels, np.float32)
    if folded is not None and bias_values is not None and bias_values.shape == (out_channels,):
        scale_values, shift = folded
        scale = gs.Constant(names(node.name + ".scale"), scale_values)
        bias = gs.Constant(names(node.name + ".bias"),
                           (bias_values.astype(np.float32) * scale_values + shift).astype(np.float32))
        output = norm.outputs[0]
        norm.inputs, norm.outputs = [], []
    mul, read = _sole_consumer(graph, output, ("Mul",)) or (None, None)
    factor = _channel_constant(mul, read, out_channels, len(weight_shape)) if mul is not None else None
    base = _constant_array(bias) if bias is not None else np.zeros(out_channels, np.float32)
    if factor is not None and base is not None and base.shape == (out_channels,):
        # y * f = Conv(X, W * (scale * f), bias * f), as onnxruntime's ConvMulFusion folds it for a dense Conv
        # (PaddleOCR's learnable affine blocks: a scalar Mul and Add after BatchNormalization).
        if scale is not None:  # this function's own, from the BatchNormalization
            scale.values = (scale.values * factor).astype(np.float32)
        else:  # one number when the factor is (a scalar Mul: 4 bytes, where [O] would grow small models)
            same = bool(np.all(factor == factor[0])) if factor.size else False
            scale = gs.Constant(names(node.name + ".scale"), (factor[:1] if same else factor).astype(np.float32))
        if bias is not None:
            bias = gs.Constant(names(node.name + ".bias"), (base.astype(np.float32) * factor).astype(np.float32))
        output = mul.outputs[0]
        mul.inputs, mul.outputs = [], []
    add, read = _sole_consumer(graph, output, ("Add",)) or (None, None)
    shift = _channel_constant(add, read, out_channels, len(weight_shape)) if add is not None else None
    if shift is not None:
        base = _constant_array(bias) if bias is not None else np.zeros(out_channels, np.float32)
        if base is not None and base.shape == (out_channels,):
            bias = gs.Constant(names(node.name + ".bias"), (base.astype(np.float32) + shift).astype(np.float32))
            output = add.outputs[0]
            add.inputs, add.outputs = [], []
    activation, _ = _sole_consumer(graph, output, ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "HardSwish",
                                                   "Clip")) or (None, None)
    fused = _activation(activation) if activation is not None else None
    if fused is not None:
        attrs["activation"] = fused[0]
        if fused[1]:
            attrs["activation_params"] = fused[1]
        output = activation.outputs[0]
        activation.inputs, activation.outputs = [], []
    hard_swish = _decomposed_hard_swish(graph, output) if fused is None else None
    if hard_swish is not None:
        attrs["activation"] = "HardSwish"
        for written_out in hard_swish[0]:
            written_out.inputs, written_out.outputs = [], []
        output = hard_swish[1]
    if bias is not None or scale is not None:
        inputs.append(bias if bias is not None else gs.Variable.empty())
    if scale is not None:
        inputs.append(scale)
    node.op, node.domain, node.attrs, node.inputs, node.outputs = "CodebookConv", DOMAIN, attrs, inputs, [output]


def lstm_fusable(node: gs.Node) -> bool:
    """An LSTM (or a CodebookLSTM already rewritten for another of its weights) that CodebookLSTM can run: the
    default activations (Sigmoid, Tanh, Tanh per direction, stated or not), no activation_alpha/beta, layout 0."""
    if (node.op, node.domain or "") not in (("LSTM", ""), ("CodebookLSTM", DOMAIN)):
        return False
    if "activation_alpha" in node.attrs or "activation_beta" in node.attrs or _attr(node, "layout", 0) != 0:
        return False  # (onnxruntime's CPU LSTM refuses layout 1 anyway)
    directions = 2 if _attr(node, "direction", "forward") in ("bidirectional", b"bidirectional") else 1
    activations = node.attrs.get("activations")
    return activations is None or [a.decode() if isinstance(a, bytes) else a for a in activations] == \
        ["Sigmoid", "Tanh", "Tanh"] * directions


def _to_lstm(node: gs.Node, slot: int, record: gs.Constant) -> None:
    """LSTM -> CodebookLSTM (same inputs and attributes, default activations implied) reading ``record`` in ``slot``
    (1: W, 2: R, 3: B)."""
    if node.op == "LSTM":
        node.op, node.domain = "CodebookLSTM", DOMAIN
        node.attrs.pop("activations", None)
    node.inputs[slot] = record


def fold_bias_adds(root: gs.Graph, emitted: list[tuple[gs.Node, object]], overridable: set[str],
                   folded_names: set[str]) -> str:
    """Folds into each CodebookMatMul of ``emitted`` that has no bias an Add that alone reads its output Y (directly
    or through Identity nodes; Y not a graph output) and adds a constant float32 vector of shape [N] (an
    initializer not named in ``overridable``, the model's graph inputs, or a Cast/Reshape/Unsqueeze/Identity chain of
    such, which onnxruntime folds when it creates the session): that vector becomes the node's ``bias`` input and the node writes the Add's
    output. The kernel adds the bias as it stores each output (one float32 addition, the one the Add did), so a
    pass over Y is saved. onnxruntime does not fuse MatMul + Add for the dense model when X has more than two
    dimensions (its MatMulAddFusion makes a Gemm of 2-D products only): a transformer's projections keep a separate
    bias Add there (minilm-l3: 15 of its 18 weight products, docs/benchmarks.md branch speed16).
    Results: the same bits as MatMul then Add on the decode-once dense panels, the per-run dense panels of a record
    without outliers and the fused kernel without outliers; where the record has outliers and the node takes the
    fused kernel or the per-run panels, the outlier corrections now come after the bias instead of before it (as for
    a Gemm's C folded into the bias), a different fp32 rounding of the same sum (docs/ops.md). Adds each folded
    bias's name to ``folded_names`` (the writer's half_dense then halves it as it did the Add's input); returns a
    log line."""
    owners = {id(node): graph for graph in all_graphs(root) for node in graph.nodes}
    folded = []
    for node, _ in emitted:
        if node.op != "CodebookMatMul" or node.domain != DOMAIN or (len(node.inputs) > 2 and node.inputs[2].name):
            continue
        graph = owners.get(id(node), root)
        found = _sole_consumer(graph, node.outputs[0], ("Add",))
        if found is None:
            continue
        add, y = found
        if len(add.inputs) != 2 or len(add.outputs) != 1 or sum(t is y for t in add.inputs) != 1:
            continue
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        value = fold_value(other, overridable, depth=4, ops=BIAS_CHAIN_OPS)
        n = record_out_features(node.inputs[1])
        if value is None or value.dtype != np.float32 or value.shape != (n,):
            continue
        output = add.outputs[0]
        add.outputs.clear()  # the Add, and any Identity between, have no reader left: the pass's cleanup drops them
        node.inputs = [node.inputs[0], node.inputs[1], other]
        node.outputs = [output]
        folded_names.add(other.name)
        folded.append(node.name or output.name)
    return f"bias Adds folded into CodebookMatMul: {len(folded)}" + (f" ({', '.join(folded)})" if folded else "")


def record_out_features(record: gs.Constant) -> int:
    """N of a [K, N] record, read from its header (docs/format.md: dims start at byte 24)."""
    data = np.asarray(record.values, dtype=np.uint8)
    return int(data[32:40].view("<u8")[0])
