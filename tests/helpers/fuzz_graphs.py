"""Random valid ONNX graphs built from the op table, for the fuzz property.

``random_model(draw, st)`` stacks random blocks on an NCHW tensor: dense,
grouped and depthwise convs, activations, BatchNorm, per-channel scales,
residual adds, concats, channel splits and slices, pools, Resize, NHWC round
trips, MatMul on the last axis, Expand/Tile repeats, an If whose branch reads
a tensor, and a head (global pool, flatten, Gemm). The exporter blocks add
what real exporters write: RNN / GRU / LSTM layers read back to a feature
axis as PyTorch does, weights stored as int8 / uint8 behind DequantizeLinear,
float16 behind Cast, behind Transpose / Reshape / Unsqueeze chains or in
Constant nodes, QuantizeLinear -> DequantizeLinear on activations, Gemm
(transB 0 and 1) and MatMul on a 3-D activation. The control blocks put
networks inside subgraphs: an If whose branches each hold a random sub-stack
of blocks (weights in the branch, captured from the outer graph, or one
outer weight read by both branches' first convs), both ending at one shape,
its condition a constant, a bool graph input or computed from the data;
sometimes a second output, a residual around the If, or the branches reusing
a tensor name (legal ONNX: the If stays opaque). A Loop (2-3 trips) whose
body applies a small network to the carried state, maybe reading the loop's
input again, maybe with a scan output. Sub-stacks may nest one more If or
Loop. Model-wide variants: int64 constants deduplicated (one Split sizes or
axes tensor read by several nodes, across scopes), value_info recorded in
every graph (subgraphs' included). ``feed_sets(model)`` gives the feeds that
take each branch. Every shape is static and every graph runs in onnxruntime;
which channels can prune is the analysis' business.
"""
from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxprune.core.walk import all_graphs
from tests.helpers import oracle
from tests.helpers.graphs import Graph, feeds

BASE_BLOCKS = ("conv", "grouped", "depthwise", "act", "bn", "scale", "residual", "concat", "split",
               "slice", "pool", "resize", "nhwc", "matmul_last", "tile", "if_branch", "transpose_conv")
EXPORTER_BLOCKS = ("rnn", "conv_src", "matmul_3d", "gemm", "qdq", "bias_add")
CONTROL_BLOCKS = ("if_net", "loop")
BLOCKS = BASE_BLOCKS + EXPORTER_BLOCKS + CONTROL_BLOCKS
# What a branch or a loop body stacks: blocks that keep H and W (both branches
# must end at one shape), and the control blocks again (nesting, to MAX_DEPTH).
SUB_BLOCKS = ("conv", "grouped", "depthwise", "act", "bn", "scale", "residual", "concat", "split", "slice",
              "nhwc", "matmul_last", "bias_add", "conv_src") + CONTROL_BLOCKS
MAX_DEPTH = 2
COND_INPUT = "branch_cond"  # the bool graph input that If blocks may read
# Where a subgraph's weights live: its own initializers, the outer graph's
# (captured), or either, weight by weight.
PLACES = ("own", "outer", "mixed")

# Where a weight is stored (``Builder.source``): each yields the float32 value a layer reads.
WEIGHT_SOURCES = ("init", "constant", "fp16", "dq_tensor", "dq_channel", "transpose", "dq_transpose",
                  "reshape", "unsqueeze")
BIAS_SOURCES = ("init", "constant", "fp16", "dq_int32", "reshape")
RNN_SOURCES = ("init", "constant", "fp16", "dq_tensor", "dq_channel")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def run_as_written(model: onnx.ModelProto, feeds: dict) -> list:
    """``oracle.run`` without onnxruntime's QDQ fusions, which compute in
    integers what the graph states in float: they quantize a float weight from
    its range (QGemm after a QuantizeLinear -> DequantizeLinear pair) or the
    activation per block of 32 inputs (MatMulNBits from DequantizeLinear(int8
    weight) -> MatMul), so removing channels changes the kept ones' rounding
    (about 1e-4). The pruned model must equal the masked one as written; the
    default session must still load and run it (the fusions accept it)."""
    data = model.SerializeToString()
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    outs = []
    for written in (False, True) if quantized else (False,):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        if written:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        outs = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    return outs


def as_written():
    """Context: the oracle runs models with ``run_as_written``."""
    return mock.patch.object(oracle, "run", run_as_written)


def feed_sets(model: onnx.ModelProto) -> list[dict]:
    """Inputs of the declared shapes (the bool condition input True) and, when
    an If's condition is not a constant, a second set with ``x`` negated and
    the condition input False: a condition computed as mean(x) > 0 flips with
    it, so each branch runs on one of the two."""
    first = feeds(model)
    bools = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.BOOL]
    for name in bools:
        first[name] = np.array(True)
    graphs = list(all_graphs(model.graph))
    consts = {t.name for g in graphs for t in g.initializer}
    varies = any(n.op_type == "If" and n.input[0] not in consts for g in graphs for n in g.node)
    if not varies:
        return [first]
    second = {k: np.array(not v) if k in bools else -v for k, v in first.items()}
    return [first, second]


class Root(Graph):
    """The main graph; with ``dedup`` an int64 constant equal to one already
    made is that one (Split sizes, Slice bounds, shapes, axes shared between
    readers, as constant-folding optimizers and some exporters leave them),
    whether it is read in the main graph or captured by a subgraph."""

    def __init__(self, seed: int, dedup: bool) -> None:
        super().__init__(opset=17, seed=seed)
        self.dedup, self._ints = dedup, []

    def init(self, name: str, value, dtype=None) -> str:
        arr = np.asarray(value) if dtype is None else np.asarray(value).astype(dtype)
        if self.dedup and arr.dtype == np.int64:
            for known, have in self._ints:
                if known.shape == arr.shape and np.array_equal(known, arr):
                    return have
        name = super().init(name, value, dtype)
        if arr.dtype == np.int64:
            self._ints.append((arr, name))
        return name


class Scope(Graph):
    """A subgraph being built: its own node and initializer lists, the outer
    graph's name pool and rng (names stay unique across scopes). Where its
    weights go follows ``place``: "own" (the subgraph's initializers and
    Constant nodes), "outer" (the enclosing graph's, read as captures) or
    "mixed" (either, weight by weight)."""

    def __init__(self, outer: Graph, place: str) -> None:
        super().__init__(opset=outer.opset)
        self.rng, self._names, self.outer, self.place = outer.rng, outer._names, outer, place

    def _outer(self) -> bool:
        return self.place == "outer" or (self.place == "mixed" and self.rng.random() < 0.5)

    def init(self, name: str, value, dtype=None) -> str:
        return self.outer.init(name, value, dtype) if self._outer() else super().init(name, value, dtype)

    def constant(self, name: str, value) -> str:
        return self.outer.constant(name, value) if self._outer() else super().constant(name, value)

    def graph(self, hint: str, inputs: list, outputs: list, shapes: bool = True) -> onnx.GraphProto:
        """The subgraph; ``inputs`` / ``outputs``: (name, elem type, shape);
        without ``shapes`` its outputs declare their type only."""
        vi = helper.make_tensor_value_info
        return helper.make_graph(list(self.nodes), self.fresh(hint), [vi(*i) for i in inputs],
                                 [vi(*o) if shapes else vi(*o[:2], None) for o in outputs], list(self.inits))


def rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every use and definition of ``old`` in ``graph`` and its subgraphs becomes ``new``."""
    for t in graph.initializer:
        if t.name == old:
            t.name = new
    for g in all_graphs(graph):
        for n in g.node:
            n.input[:] = [new if i == old else i for i in n.input]
            n.output[:] = [new if o == old else o for o in n.output]
        for o in g.output:
            if o.name == old:
                o.name = new


class Builder:
    def __init__(self, draw, st, seed: int) -> None:
        self.draw, self.st = draw, st
        self.g = Root(seed, dedup=self.flip())
        self.g._names.update({"x", COND_INPUT})
        self.rng = self.g.rng
        self.t, self.c, self.h, self.w = "x", 3, 8, 8
        self.inputs: dict = {"x": [1, 3, 8, 8]}
        self.depth = 0  # how many subgraphs the current scope is nested in
        self.iters: list[str] = []  # iteration counters of the loop bodies being built
        # variants drawn inside blocks ("src:fp16", "rnn:LSTM", "if:cond=data"...)
        self.tags: list[str] = ["model:dedup_int_constants"] if self.g.dedup else []
        # After a QuantizeLinear -> DequantizeLinear pair, onnxruntime fuses QDQ
        # MatMuls into integer kernels that refuse a weight quantized per input
        # feature (its zero point "is not valid"): quantizers never write one.
        self.quantized = False

    def pick(self, options):
        return self.draw(self.st.sampled_from(list(options)))

    def flip(self) -> bool:
        return self.draw(self.st.booleans())

    def channels(self) -> int:
        return self.draw(self.st.integers(2, 8))

    def conv(self, cout: int | None = None, group: int = 1, k: int | None = None) -> None:
        cout = cout or self.channels()
        k = k or self.pick([1, 3])
        self.t = self.g.conv(self.t, self.c, cout, k=k, group=group, bias=self.pick([True, False]))
        self.c = cout

    def block(self, kind: str) -> None:
        g = self.g
        if kind == "conv":
            self.conv()
        elif kind == "grouped" and self.c % 2 == 0:
            self.conv(cout=self.c * self.pick([1, 2]) // 2 * 2, group=2)
        elif kind == "depthwise":
            self.conv(cout=self.c * self.pick([1, 2]), group=self.c, k=3)
        elif kind == "act":
            op = self.pick(["Relu", "Sigmoid", "HardSwish", "Tanh", "LeakyRelu"])
            self.t = g.add(op, [self.t])
        elif kind == "bn":
            c = self.c
            self.t = g.add("BatchNormalization", [self.t, g.rand("s", (c,), 0.5, 1.5), g.rand("b", (c,)),
                                                  g.rand("m", (c,)), g.rand("v", (c,), 0.5, 1.5)])
        elif kind == "scale":
            self.t = g.add(self.pick(["Mul", "Add"]), [self.t, g.rand("k", (self.c, 1, 1))])
        elif kind == "residual":
            branch = g.add("Relu", [g.conv(self.t, self.c, self.c, k=3)])
            self.t = g.add("Add", [self.t, branch])
        elif kind == "concat":
            cout = self.channels()
            other = g.conv(self.t, self.c, cout, k=1)
            parts = [self.t, other] if self.pick([True, False]) else [other, self.t]
            self.t = g.add("Concat", parts, axis=1)
            self.c += cout
        elif kind == "split" and self.c >= 2:
            first = self.draw(self.st.integers(1, self.c - 1))
            a, b = g.add("Split", [self.t, g.ints("sp", [first, self.c - first])], n_out=2, axis=1)
            self.t, self.c = (a, first) if self.pick([True, False]) else (b, self.c - first)
        elif kind == "slice" and self.c >= 2:
            s = self.draw(self.st.integers(0, self.c - 1))
            e = self.draw(self.st.integers(s + 1, self.c))
            self.t = g.add("Slice", [self.t, g.ints("st", [s]), g.ints("en", [e]), g.ints("ax", [1])])
            self.c = e - s
        elif kind == "pool" and min(self.h, self.w) >= 4:
            self.t = g.add(self.pick(["MaxPool", "AveragePool"]), [self.t], kernel_shape=[2, 2], strides=[2, 2])
            self.h, self.w = self.h // 2, self.w // 2
        elif kind == "resize" and max(self.h, self.w) <= 8:
            scales = g.init("sc", np.array([1, 1, 2, 2], np.float32))
            self.t = g.add("Resize", [self.t, "", scales], mode="nearest")
            self.h, self.w = self.h * 2, self.w * 2
        elif kind == "nhwc":
            nhwc = g.add("Transpose", [self.t], perm=[0, 2, 3, 1])
            nhwc = g.add("Mul", [nhwc, g.rand("k", (self.c,))])  # channels-last constant
            self.t = g.add("Transpose", [nhwc], perm=[0, 3, 1, 2])
        elif kind == "matmul_last":
            # MatMul over the last axis mixes W positions; channels pass.
            self.t = g.add("MatMul", [self.t, g.rand("mw", (self.w, self.w))])
        elif kind == "tile":
            self.t = g.add("Tile", [self.t, g.ints("reps", [1, 2, 1, 1])])
            self.c *= 2
        elif kind == "if_branch":
            self.if_branch()
        elif kind == "transpose_conv" and max(self.h, self.w) <= 8:
            cout = self.channels()
            w = g.rand("tw", (self.c, cout, 2, 2))
            self.t = g.add("ConvTranspose", [self.t, w], strides=[2, 2])
            self.c, self.h, self.w = cout, self.h * 2, self.w * 2
        elif kind == "conv_src":
            self.conv_src()
        elif kind == "qdq":
            self.qdq()
        elif kind == "bias_add":
            self.bias_add()
        elif kind == "matmul_3d":
            self.dense(gemm=False)
        elif kind == "gemm":
            self.dense(gemm=True)
        elif kind == "rnn":
            self.rnn()
        elif kind == "if_net" and self.depth < MAX_DEPTH:
            self.if_net()
        elif kind == "loop" and self.depth < MAX_DEPTH:
            self.loop()

    def if_branch(self) -> None:
        """An If whose then-branch reads the current tensor (a capture) and whose
        else-branch reads another: both freeze their own groups only."""
        g = self.g
        shape = [1, self.c, self.h, self.w]
        cond = g.init("cond", np.array(True))
        out = g.fresh("if_out")

        def branch(name, node):
            return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, shape)])

        then = branch("then", helper.make_node("Relu", [self.t], ["then_y"]))
        other = branch("else", helper.make_node("Sigmoid", [self.t], ["else_y"]))
        g.nodes.append(helper.make_node("If", [cond], [out], name=g.fresh("if"), then_branch=then, else_branch=other))
        self.t = out

    # -- control blocks: networks inside subgraphs --------------------------------
    def substack(self, scope: Scope, t: str, c: int, max_blocks: int = 3) -> tuple[str, int]:
        """Random blocks (``SUB_BLOCKS``: H and W kept) built inside ``scope``
        from tensor ``t`` of ``c`` channels; returns the last tensor and its channels."""
        saved = self.g, self.t, self.c, self.h, self.w
        self.g, self.t, self.c = scope, t, c
        self.depth += 1
        try:
            for kind in self.draw(self.st.lists(self.st.sampled_from(SUB_BLOCKS), max_size=max_blocks)):
                before = len(scope.nodes)
                self.block(kind)
                if len(scope.nodes) > before:
                    self.tags.append(f"sub:{kind}")
            assert (self.h, self.w) == saved[3:]
            return self.t, self.c
        finally:
            self.depth -= 1
            self.g, self.t, self.c = saved[:3]

    def condition(self) -> str:
        """An If's condition: a constant, the bool graph input, computed from
        the data (mean of the input x, or of the current tensor, > 0), or in a
        loop body from the iteration count (iter > 0: one run takes both branches)."""
        g = self.g
        how = self.pick(["const", "input", "data", "tensor"] + (["iter"] if self.iters else []))
        self.tags.append(f"if:cond={how}")
        if how == "iter":
            return g.add("Greater", [self.iters[-1], g.init("first", np.array(0, np.int64))])
        if how == "const":
            return g.init("cond", np.array(self.flip()))
        if how == "input":
            self.inputs[COND_INPUT] = ([], TensorProto.BOOL)
            return COND_INPUT
        mean = g.add("ReduceMean", ["x" if how == "data" else self.t], keepdims=0)
        return g.add("Greater", [mean, g.init("zero", np.array(0, np.float32))])

    def if_net(self) -> None:
        """An If whose branches hold networks: each its own random sub-stack,
        both ending at [1, cout, H, W]; weights in the branch, captured from
        the outer graph, or (sometimes) one outer weight read by both
        branches' first convs (and sometimes by a conv after the If too).
        Variants: a second output (each branch's last tensor through a 1x1
        conv, concatenated after the If), a residual Add of the If's input and
        output, branch outputs declared without a shape, the else branch
        reusing a name (node output or initializer) that the then branch
        defines (legal ONNX: the If stays opaque)."""
        g = self.g
        c, h, w = self.c, self.h, self.w
        cond = self.condition()
        cout = c if self.pick([False, False, True]) else self.channels()
        two = self.pick([False, False, True])
        cout2 = self.channels()
        shared = None
        if self.pick([False, False, True]):
            k, mid = self.pick([1, 3]), self.channels()
            shared = g.init("shared_w", self.rng.standard_normal((mid, c, k, k)) * 0.3), mid, k
            self.tags.append("if:shared_weight")
        typed = self.pick([True, True, True, False])
        if not typed:
            self.tags.append("if:outputs_without_shape")
        branches = []
        for hint in ("then", "else"):
            scope = Scope(g, self.pick(PLACES))
            self.tags.append(f"if:place={scope.place}")
            t, cc = self.t, c
            if shared is not None:
                p = shared[2] // 2
                t, cc = scope.add("Conv", [t, shared[0]], pads=[p, p, p, p]), shared[1]
            t, cc = self.substack(scope, t, cc)
            if cc != cout or not scope.nodes or self.flip():
                t, cc = scope.conv(t, cc, cout, k=self.pick([1, 3]), bias=self.flip()), cout
            outs = [(t, TensorProto.FLOAT, [1, cout, h, w])]
            if two:
                second = scope.conv(t, cc, cout2, k=1, bias=self.flip())
                outs.append((second, TensorProto.FLOAT, [1, cout2, h, w]))
            branches.append(scope.graph(hint, [], outs, shapes=typed))
        then, other = branches
        if self.pick([False, False, False, True]):
            self.reuse_name(then, other)
        outs = [g.fresh("if_out")] + ([g.fresh("if_out")] if two else [])
        g.nodes.append(helper.make_node("If", [cond], outs, name=g.fresh("if"), then_branch=then,
                                        else_branch=other))
        y, x = outs[0], self.t
        if cout == c and self.flip():
            y = g.add("Add", [self.t, y])
            self.tags.append("if:residual")
        self.t, self.c = y, cout
        if two:
            self.tags.append("if:two_outputs")
            self.t = g.add("Concat", [self.t, outs[1]] if self.flip() else [outs[1], self.t], axis=1)
            self.c += cout2
        if shared is not None and self.pick([False, False, True]):  # the main graph reads it too
            p = shared[2] // 2
            z = g.add("Conv", [x, shared[0]], pads=[p, p, p, p])
            self.t = g.add("Concat", [self.t, z], axis=1)
            self.c += shared[1]
            self.tags.append("if:shared_with_main")

    def reuse_name(self, then: onnx.GraphProto, other: onnx.GraphProto) -> None:
        """Rename a tensor (or initializer) the else branch defines to one the
        then branch defines: sibling scopes may share names in ONNX."""
        def defined(b, inits):
            outs = {o.name for o in b.output}
            if inits:
                return [t.name for t in b.initializer]
            return [o for n in b.node for o in n.output if o and o not in outs]

        inits = self.flip()
        if not (defined(then, inits) and defined(other, inits)):
            inits = not inits
            if not (defined(then, inits) and defined(other, inits)):
                return
        old, new = self.pick(defined(other, inits)), self.pick(defined(then, inits))
        rename(other, old, new)
        self.tags.append("if:reused_initializer_name" if inits else "if:reused_name")

    def loop(self) -> None:
        """A Loop (2-3 trips) whose body applies a random sub-stack to the
        carried state (back to its channels, maybe residual, maybe reading the
        loop's input again, maybe squashed by Tanh), maybe with a scan output
        averaged over the trips."""
        g = self.g
        c, h, w = self.c, self.h, self.w
        shape = [1, c, h, w]
        scope = Scope(g, self.pick(PLACES))
        self.tags.append(f"loop:place={scope.place}")
        it, go, state = g.fresh("iter"), g.fresh("go_in"), g.fresh("state_in")
        self.iters.append(it)
        try:
            y, cc = self.substack(scope, state, c)
        finally:
            self.iters.pop()
        if cc != c or not scope.nodes:
            y = scope.conv(y, cc, c, k=self.pick([1, 3]), bias=self.flip())
        if self.flip():
            y = scope.add("Add", [state, y])
            self.tags.append("loop:residual")
        if self.pick([False, False, True]):  # the loop's input read again in every trip (a capture)
            y = scope.add(self.pick(["Add", "Mul"]), [y, self.t])
            self.tags.append("loop:captures_input")
        if self.flip():
            y = scope.add("Tanh", [y])
        outs = [(scope.add("Identity", [go]), TensorProto.BOOL, []), (y, TensorProto.FLOAT, shape)]
        scan = self.flip()
        if scan:
            self.tags.append("loop:scan_output")
            outs.append((scope.add("Relu", [y]), TensorProto.FLOAT, shape))
        typed = self.pick([True, True, True, False])
        if not typed:
            self.tags.append("loop:outputs_without_shape")
        body = scope.graph("body", [(it, TensorProto.INT64, []), (go, TensorProto.BOOL, []),
                                    (state, TensorProto.FLOAT, shape)], outs, shapes=typed)
        cond = g.init("go", np.array(True)) if self.flip() else ""
        final = g.fresh("loop_y")
        outputs = [final] + ([g.fresh("loop_scan")] if scan else [])
        g.nodes.append(helper.make_node("Loop", [g.ints("trips", self.pick([2, 3])), cond, self.t], outputs,
                                        name=g.fresh("loop"), body=body))
        self.t = final
        if scan:
            mean = g.add("ReduceMean", [outputs[1]], axes=[0], keepdims=0)
            self.t = g.add("Add", [final, mean])

    # -- where weights are stored ------------------------------------------------
    def quantize(self, value: np.ndarray, axis: int | None, dtype):
        """(q, scale, zero point) with ``(q - zp) * scale ~ value``, per tensor
        (``axis`` None) or per position of ``axis``."""
        info = np.iinfo(dtype)
        amax = np.abs(value).max() if axis is None else np.abs(value).max(
            axis=tuple(a for a in range(value.ndim) if a != axis))
        scale = (np.maximum(amax, 1e-3) / 100).astype(np.float32)
        n = () if axis is None else (value.shape[axis],)
        if dtype == np.int32:
            zp = np.zeros(n, dtype)
        elif dtype == np.uint8:
            zp = self.rng.integers(118, 139, n).astype(dtype)
        else:
            zp = self.rng.integers(-10, 11, n).astype(dtype)
        shape = [1] * value.ndim
        if axis is not None:
            shape[axis] = -1
        q = np.round(value / scale.reshape(shape)) + zp.reshape(shape)
        return np.clip(q, info.min, info.max).astype(dtype), scale, zp

    def dequantize(self, name: str, value: np.ndarray, axis: int | None, dtype) -> str:
        g = self.g
        q, scale, zp = self.quantize(value, axis, dtype)
        store = g.constant if self.flip() else g.init
        inputs = [store(f"{name}_q", q), g.init(f"{name}_s", scale)]
        if dtype != np.int32 and (dtype == np.uint8 or self.flip()):
            inputs.append(g.init(f"{name}_zp", zp))
        attrs = {} if axis is None else {"axis": axis}
        return g.add("DequantizeLinear", inputs, **attrs)

    def source(self, name: str, value, out_axis: int, in_axis: int, kinds=WEIGHT_SOURCES) -> str:
        """A float32 tensor equal to ``value`` (up to float16 / int8 rounding),
        stored the way an exporter might: initializer, Constant node, float16
        behind a Cast, int8 / uint8 behind a DequantizeLinear (per tensor, or
        per channel along ``out_axis`` or ``in_axis``), behind a Transpose,
        a Reshape or an Unsqueeze."""
        g = self.g
        value = np.asarray(value, dtype=np.float32)
        if 1 not in value.shape:
            kinds = [k for k in kinds if k != "unsqueeze"]
        if value.ndim < 2:
            kinds = [k for k in kinds if k not in ("transpose", "dq_transpose")]
        kind = self.pick(kinds)
        self.tags.append(f"src:{kind}")
        if kind == "init":
            return g.init(name, value)
        if kind == "constant":
            return g.constant(name, value)
        if kind == "fp16":
            store = g.constant if self.flip() else g.init
            return g.add("Cast", [store(name, value.astype(np.float16))], to=TensorProto.FLOAT)
        if kind == "dq_tensor":
            return self.dequantize(name, value, None, self.pick([np.int8, np.uint8]))
        axes = [out_axis] if self.quantized else [out_axis, in_axis]
        if kind == "dq_channel":
            return self.dequantize(name, value, self.pick(axes), self.pick([np.int8, np.uint8]))
        if kind == "dq_int32":
            return self.dequantize(name, value, self.pick([None, 0]), np.int32)
        if kind in ("transpose", "dq_transpose"):
            perm = list(self.draw(self.st.permutations(range(value.ndim))))
            stored = np.ascontiguousarray(np.transpose(value, np.argsort(perm)))
            if kind == "transpose":
                src = g.init(name, stored)
            else:  # tf2onnx QDQ: int8 per channel, in the stored (e.g. HWIO) layout
                src = self.dequantize(name, stored, perm[self.pick(axes)], np.int8)
            return g.add("Transpose", [src], perm=perm)
        if kind == "reshape":
            stored = value.reshape(self.pick([(-1,), (value.shape[0], -1), (1, -1)]))
            return g.add("Reshape", [g.init(name, stored), g.ints(f"{name}_shape", value.shape)])
        assert kind == "unsqueeze"
        ones = [a for a, d in enumerate(value.shape) if d == 1]
        added = ones if self.flip() else ones[:1]
        stored = value.reshape([d for a, d in enumerate(value.shape) if a not in added])
        return g.add("Unsqueeze", [g.init(name, stored), g.ints(f"{name}_axes", added)])

    # -- exporter blocks ---------------------------------------------------------
    def conv_src(self) -> None:
        """A Conv (dense or depthwise) whose weight and bias come from a source chain."""
        cin = self.c
        group = cin if self.pick([False, False, True]) else 1
        cout = cin * self.pick([1, 2]) if group > 1 else self.channels()
        k = 3 if group > 1 else self.pick([1, 3])
        w = self.rng.standard_normal((cout, cin // group, k, k)) * 0.3
        inputs = [self.t, self.source("cw", w, 0, 1)]
        if self.flip():
            inputs.append(self.source("cb", self.rng.standard_normal(cout) * 0.1, 0, 0, BIAS_SOURCES))
        p = k // 2
        self.t = self.g.add("Conv", inputs, pads=[p, p, p, p], group=group)
        self.c = cout

    def qdq(self) -> None:
        """QuantizeLinear -> DequantizeLinear on the activation, one scale for the tensor."""
        g = self.g
        dtype = self.pick([np.uint8, np.int8])
        zp = np.array(128 if dtype == np.uint8 else 0, dtype)
        store = g.constant if self.flip() else g.init
        scale, zero = store("qs", np.array(self.rng.uniform(0.02, 0.08), np.float32)), store("qz", zp)
        q = g.add("QuantizeLinear", [self.t, scale, zero])
        self.quantized = True
        self.t = g.add("DequantizeLinear", [q, scale, zero])

    def bias_add(self) -> None:
        """A per-channel constant broadcast onto NCHW through Unsqueeze or Reshape (Keras style)."""
        g = self.g
        c = self.c
        how = self.pick(["unsqueeze", "reshape4", "reshape3"])
        self.tags.append(f"bias_add:{how}")
        stored = g.init("bk", self.rng.standard_normal(c).astype(np.float32) * 0.5)
        if how == "unsqueeze":
            k = g.add("Unsqueeze", [stored, g.ints("bk_axes", [1, 2])])
        else:
            k = g.add("Reshape", [stored, g.ints("bk_shape", [1, c, 1, 1] if how == "reshape4" else [c, 1, 1])])
        self.t = g.add(self.pick(["Add", "Mul", "Sub"]), [self.t, k])

    def dense(self, gemm: bool) -> None:
        """NCHW -> rows of features -> Gemm (transB 0 / 1) or a MatMul on a 3-D
        activation, weights from a source chain -> back to NCHW."""
        g = self.g
        c, h, w = self.c, self.h, self.w
        n = self.channels()
        if self.flip():
            rows = g.add("Transpose", [self.t], perm=[0, 2, 3, 1])
            rows = g.add("Reshape", [rows, g.ints("rows", [h * w, c] if gemm else [1, h * w, c])])
        else:
            rows = g.add("Reshape", [self.t, g.ints("rows", [1, c, h * w])])
            rows = g.add("Transpose", [rows], perm=[0, 2, 1])
            if gemm:
                rows = g.add("Reshape", [rows, g.ints("rows2", [h * w, c])])
        value = self.rng.standard_normal((c, n)) * 0.4
        if gemm:
            tb = self.pick([0, 1])
            self.tags.append(f"gemm:transB={tb}")
            wname = self.source("gw", value.T if tb else value, 0 if tb else 1, 1 if tb else 0)
            inputs = [rows, wname]
            if self.flip():
                inputs.append(self.source("gc", self.rng.standard_normal(n) * 0.1, 0, 0, BIAS_SOURCES))
            y = g.add("Gemm", inputs, transB=tb, alpha=self.pick([1.0, 0.5]), beta=self.pick([1.0, 2.0]))
        else:
            y = g.add("MatMul", [rows, self.source("mw", value, 1, 0)])
            if self.flip():
                y = g.add("Add", [y, self.source("mb", self.rng.standard_normal(n) * 0.1, 0, 0, BIAS_SOURCES)])
        if self.flip():
            y = g.add("Relu", [y])
        y = g.add("Reshape", [y, g.ints("nhwc", [1, h, w, n])])
        self.t = g.add("Transpose", [y], perm=[0, 3, 1, 2])
        self.c = n

    def rnn(self) -> None:
        """RNN / GRU / LSTM over the rows (or the columns) of the feature map, as
        PyTorch exports them: X [seq, batch, features]; Y [seq, dirs, batch,
        hidden] read back through Transpose + Reshape or Squeeze, or Y_h used."""
        g = self.g
        seq_h = self.flip()  # sequence along H (batch along W), or the other way round
        seq, batch = (self.h, self.w) if seq_h else (self.w, self.h)
        x = g.add("Transpose", [self.t], perm=[2, 0, 3, 1] if seq_h else [3, 0, 2, 1])  # [S, 1, B, C]
        if self.flip():
            x = g.add("Squeeze", [x, g.ints("sq", [1])])
        else:
            x = g.add("Reshape", [x, g.ints("xs", [seq, batch, self.c])])
        feat, state = self.c, None
        for _ in range(self.pick([1, 1, 2])):
            x, seq, feat, state = self.rnn_layer(x, seq, batch, feat, state)
        x = g.add("Transpose", [x], perm=[2, 0, 1] if seq_h else [2, 1, 0])
        self.t = g.add("Unsqueeze", [x, g.ints("ux", [0])])
        self.c = feat
        self.h, self.w = (seq, batch) if seq_h else (batch, seq)

    def rnn_layer(self, x: str, seq: int, batch: int, feat: int, state=None):
        """One layer on X [seq, batch, feat]; returns its read-out [seq', batch,
        feat'], seq', feat' and its final states (d, hidden, Y_h, Y_c). With
        ``state`` it may start from the previous layer's final states (an
        encoder-decoder): run-time initial states."""
        g, rng = self.g, self.rng
        op = self.pick(GATES)
        carry = state is not None and state[2] and self.flip()
        if carry:
            d, hid = state[0], state[1]
            direction = "bidirectional" if d == 2 else self.pick(["forward", "reverse"])
            self.tags.append("rnn:initial_state_from_encoder")
        else:
            direction = self.pick(["forward", "reverse", "bidirectional"])
            d, hid = (2 if direction == "bidirectional" else 1), self.channels()
        gates = GATES[op]
        inputs = [x, self.source("W", rng.standard_normal((d, gates * hid, feat)) * 0.4, 1, 2, RNN_SOURCES),
                  self.source("R", rng.standard_normal((d, gates * hid, hid)) * 0.4, 1, 2, RNN_SOURCES)]
        optional = [
            ("B", lambda: self.source("B", rng.standard_normal((d, 2 * gates * hid)) * 0.2, 1, 1,
                                      ("init", "constant", "fp16"))),
            ("sequence_lens", lambda: g.init("seq_lens", rng.integers(1, seq + 1, batch), dtype=np.int32)),
            ("initial_h", lambda: state[2] if carry else g.rand("h0", (d, batch, hid))),
        ]
        if op == "LSTM":
            optional += [("initial_c", lambda: state[3] if carry and state[3] else g.rand("c0", (d, batch, hid))),
                         ("P", lambda: g.rand("P", (d, 3 * hid)))]
        used = []
        for name, make in optional:
            if (carry and name == "initial_h") or self.flip():
                inputs.append(make())
                used.append(name)
            else:
                inputs.append("")
        while inputs[-1] == "":
            inputs.pop()
        attrs = {"hidden_size": hid, "direction": direction}
        if op == "GRU":
            attrs["linear_before_reset"] = self.pick([0, 1])
        read = self.pick(["transpose_reshape", "squeeze", "y_h", "y_h_last"] if d == 1
                         else ["transpose_reshape", "y_h", "y_h_last"])
        self.tags += [f"rnn:{op}", f"rnn:{direction}", f"rnn:{read}"] + [f"rnn:{u}" for u in used]
        y, yh = g.fresh("rnn_y"), g.fresh("rnn_yh")
        want_y = read in ("transpose_reshape", "squeeze")
        outputs = [y if want_y else "", yh if not want_y or self.flip() else ""]
        if op == "LSTM" and self.flip():
            outputs.append(g.fresh("rnn_yc"))
        while outputs[-1] == "":
            outputs.pop()
        g.add(op, inputs, outputs=outputs, **attrs)
        final = (d, hid, outputs[1] if len(outputs) > 1 else "", outputs[2] if len(outputs) > 2 else "")
        if read == "transpose_reshape":  # [S, D, B, H] -> [S, B, D, H] -> [S, B, D*H]
            t = g.add("Transpose", [y], perm=[0, 2, 1, 3])
            shape = self.pick([[seq, batch, d * hid], [0, 0, -1]])
            return g.add("Reshape", [t, g.ints("ys", shape)]), seq, d * hid, final
        if read == "squeeze":
            return g.add("Squeeze", [y, g.ints("ysq", [1])]), seq, hid, final
        if read == "y_h":  # [D, B, H] -> [B, D, H] -> [1, B, D*H]
            t = g.add("Transpose", [yh], perm=[1, 0, 2])
            return g.add("Reshape", [t, g.ints("yhs", [1, batch, d * hid])]), 1, d * hid, final
        last = g.add("Gather", [yh, g.init("last", np.array(-1, np.int64))], axis=0)  # h_n[-1]: [B, H]
        return g.add("Unsqueeze", [last, g.ints("yhu", [0])]), 1, hid, final

    def head(self) -> str:
        g = self.g
        p = g.add("GlobalAveragePool", [self.t])
        flat = g.add("Flatten", [p], axis=1)
        return g.gemm(flat, self.c, 5, trans_b=self.pick([0, 1]), bias_shape=(5,))


def random_model(draw, st, max_blocks: int = 8, blocks=BLOCKS, tags: list | None = None,
                 min_blocks: int = 1) -> onnx.ModelProto:
    """A random model; ``tags`` (when given) collects the blocks built and the
    variants drawn inside them."""
    seed = draw(st.integers(0, 2**16))
    b = Builder(draw, st, seed)
    b.conv()
    for kind in draw(st.lists(st.sampled_from(blocks), min_size=min_blocks, max_size=max_blocks)):
        before = len(b.g.nodes)
        b.block(kind)
        if len(b.g.nodes) > before:
            b.tags.append(kind)
    y = b.head()
    model = b.g.build(b.inputs, [y])
    if draw(st.booleans()):  # exporters record shapes in value_info, subgraphs' included
        model = onnx.shape_inference.infer_shapes(model)
        b.tags.append("model:value_info")
    if tags is not None:
        tags.extend(b.tags)
    return model
