"""ONNX operators in torch, one function per op: the table the repair step's
differentiable interpreter (``interpret.py``) runs a graph with.

Each rule is written from the operator's specification, for every attribute
the specification gives, or raises ``Unsupported`` naming what it does not
cover: an op without a rule, or a rule that meets an attribute it does not
implement, makes the repair refuse instead of training a function that is not
the model. Whatever a rule computes is checked against onnxruntime on the
calibration data before any weight is trained (``interpret.agreement``).

A rule is ``f(ins, at, ctx) -> tensor or list of tensors``: ``ins`` the input
tensors (None for an omitted optional input), ``at`` the node's attributes as
Python values, ``ctx`` the graph's opset (rules whose defaults changed
between opsets read it). Integer tensors (shapes, indices) are torch int64
tensors like any other, so shape arithmetic runs as the graph computes it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from onnx import TensorProto, helper, numpy_helper


class Unsupported(Exception):
    """The op, or one of its attributes, has no differentiable rule here."""


DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64, TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16, TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def ints(t) -> list[int]:
    """A shape, axes or sizes input as Python ints."""
    return [int(v) for v in t.reshape(-1).tolist()]


def _axes(ins, at, index: int = 1):
    """Axes from the attribute (older opsets) or from input ``index`` (newer)."""
    if len(ins) > index and ins[index] is not None:
        return ints(ins[index])
    return at.get("axes")


def _binary(fn):
    return lambda ins, at, ctx: fn(ins[0], ins[1])


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _mod(ins, at, ctx):
    a, b = ins
    if at.get("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


def _variadic(fn):
    def rule(ins, at, ctx):
        out = ins[0]
        for x in ins[1:]:
            out = fn(out, x)
        return out
    return rule


def _mean(ins, at, ctx):
    out = ins[0]
    for x in ins[1:]:
        out = out + x
    return out / len(ins)


def _clip(ins, at, ctx):
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else at.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else at.get("max")
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return x


def _gelu(ins, at, ctx):
    return F.gelu(ins[0], approximate="tanh" if at.get("approximate", "none") == "tanh" else "none")


def _softmax(fn):
    def rule(ins, at, ctx):
        x = ins[0]
        if ctx.opset >= 13:
            return fn(x, dim=at.get("axis", -1))
        axis = at.get("axis", 1) % x.dim()  # before opset 13: over the flattened trailing axes
        flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return fn(flat, dim=1).reshape(x.shape)
    return rule


def _cast(ins, at, ctx):
    to = at["to"]
    if to not in DTYPES:
        raise Unsupported(f"Cast to {TensorProto.DataType.Name(to)}")
    return ins[0].to(DTYPES[to])


def _gemm(ins, at, ctx):
    a, b = ins[0], ins[1]
    if at.get("transA", 0):
        a = a.t()
    if at.get("transB", 0):
        b = b.t()
    y = at.get("alpha", 1.0) * (a @ b)
    if len(ins) > 2 and ins[2] is not None:
        y = y + at.get("beta", 1.0) * ins[2]
    return y


def _same_pads(auto_pad: str, size: list, kernel: list, strides: list, dilations: list) -> list:
    """Explicit (begin..., end...) pads for SAME_UPPER / SAME_LOWER."""
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _pads(at, x, kernel: list, strides: list, dilations: list) -> list:
    spatial = x.dim() - 2
    auto = at.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(auto, list(x.shape[2:]), kernel, strides, dilations)
    if auto == "VALID":
        return [0] * (2 * spatial)
    return list(at.get("pads", [0] * (2 * spatial)))


def _pad_input(x, pads: list, value: float = 0.0):
    """(x padded where begin and end differ, the symmetric pads left for the op)."""
    spatial = len(pads) // 2
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return x, begin
    flat = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * spatial


def _conv(ins, at, ctx):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    spatial = x.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(at.get("strides", [1] * spatial))
    dilations = list(at.get("dilations", [1] * spatial))
    x, pads = _pad_input(x, _pads(at, x, kernel, strides, dilations))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(spatial)
    if fn is None:
        raise Unsupported(f"Conv over {spatial} spatial axes")
    return fn(x, w, bias, strides, pads, dilations, at.get("group", 1))


def _conv_transpose(ins, at, ctx):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    spatial = x.dim() - 2
    if "output_shape" in at or at.get("auto_pad", "NOTSET") != "NOTSET":
        raise Unsupported("ConvTranspose with output_shape or auto_pad")
    strides = list(at.get("strides", [1] * spatial))
    dilations = list(at.get("dilations", [1] * spatial))
    pads = list(at.get("pads", [0] * (2 * spatial)))
    extra = list(at.get("output_padding", [0] * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(spatial)
    if fn is None:
        raise Unsupported(f"ConvTranspose over {spatial} spatial axes")
    y = fn(x, w, None, strides, 0, [0] * spatial, at.get("group", 1), dilations)
    # The full output, then the pads cut off each end; output_padding adds at the end.
    index = [slice(None), slice(None)]
    for b, e, p, n in zip(begin, end, extra, y.shape[2:]):
        index.append(slice(b, n - e + p))
    if any(p > e for p, e in zip(extra, end)):
        y = F.pad(y, [v for p, e in zip(reversed(extra), reversed(end)) for v in (0, max(0, p - e))])
    y = y[tuple(index)]
    return y if bias is None else y + _channel_shape(y, bias)


def _channel_shape(x, v):
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


def _batch_norm(ins, at, ctx):
    x, scale, bias, mean, var = ins[:5]
    inv = torch.rsqrt(var + at.get("epsilon", 1e-5))
    return (x - _channel_shape(x, mean)) * _channel_shape(x, inv * scale) + _channel_shape(x, bias)


def _instance_norm(ins, at, ctx):
    x, scale, bias = ins
    dims = list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + at.get("epsilon", 1e-5))
    return y * _channel_shape(x, scale) + _channel_shape(x, bias)


def _layer_norm(ins, at, ctx):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = at.get("axis", -1) % x.dim()
    dims = list(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + at.get("epsilon", 1e-5)) * scale
    return y + bias if bias is not None else y


def _rms_norm(ins, at, ctx):
    x, scale = ins[0], ins[1]
    axis = at.get("axis", -1) % x.dim()
    dims = list(range(axis, x.dim()))
    return x * torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + at.get("epsilon", 1e-5)) * scale


def _pool_geometry(at, x):
    spatial = x.dim() - 2
    kernel = list(at["kernel_shape"])
    strides = list(at.get("strides", [1] * spatial))
    dilations = list(at.get("dilations", [1] * spatial))
    return spatial, kernel, strides, dilations, _pads(at, x, kernel, strides, dilations)


def _max_pool(ins, at, ctx):
    x = ins[0]
    spatial, kernel, strides, dilations, pads = _pool_geometry(at, x)
    if at.get("storage_order", 0):
        raise Unsupported("MaxPool storage_order")
    x, pads = _pad_input(x, pads, value=-math.inf)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}.get(spatial)
    if fn is None:
        raise Unsupported(f"MaxPool over {spatial} spatial axes")
    if any(2 * p > k for p, k in zip(pads, kernel)):
        x, pads = F.pad(x, [v for p in reversed(pads) for v in (p, p)], value=-math.inf), [0] * spatial
    return fn(x, kernel, strides, pads, dilations, ceil_mode=bool(at.get("ceil_mode", 0)))


def _avg_pool(ins, at, ctx):
    x = ins[0]
    spatial, kernel, strides, dilations, pads = _pool_geometry(at, x)
    if any(d != 1 for d in dilations):
        raise Unsupported("AveragePool with dilations")
    include = bool(at.get("count_include_pad", 0))
    begin, end = pads[:spatial], pads[spatial:]
    if begin != end or any(2 * p > k for p, k in zip(begin, kernel)):  # pads torch's pooling cannot take
        if not include:
            raise Unsupported("AveragePool with asymmetric or wide pads that do not count")
        x = F.pad(x, [v for b, e in zip(reversed(begin), reversed(end)) for v in (b, e)])  # zeros that count
        begin = [0] * spatial
    pads = begin
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(spatial)
    if fn is None:
        raise Unsupported(f"AveragePool over {spatial} spatial axes")
    ceil = bool(at.get("ceil_mode", 0))
    return fn(x, kernel, strides, pads, ceil_mode=ceil, count_include_pad=include)


def _global(fn):
    return lambda ins, at, ctx: fn(ins[0], dim=list(range(2, ins[0].dim())), keepdim=True)


def _global_max(x, dim, keepdim):
    return x.amax(dim=dim, keepdim=keepdim)


def _reduce(kind: str):
    def rule(ins, at, ctx):
        x = ins[0]
        axes = at.get("axes") if (kind not in ("sum",) and ctx.opset < 18) or (kind == "sum" and ctx.opset < 13) \
            else _axes(ins, at)
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [a % x.dim() for a in axes] if x.dim() else []
        if kind == "mean":
            return x.mean(dim=axes, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=axes, keepdim=keep)
        if kind == "max":
            return x.amax(dim=axes, keepdim=keep)
        if kind == "min":
            return x.amin(dim=axes, keepdim=keep)
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=axes, keepdim=keep))
        if kind == "l1":
            return x.abs().sum(dim=axes, keepdim=keep)
        if kind == "sumsquare":
            return (x * x).sum(dim=axes, keepdim=keep)
        if kind == "logsumexp":
            return torch.logsumexp(x, dim=axes, keepdim=keep)
        if kind == "prod":
            out = x
            for a in sorted(axes, reverse=True):
                out = out.prod(dim=a, keepdim=keep)
            return out
        raise Unsupported(f"Reduce {kind}")
    return rule


def _arg(fn):
    def rule(ins, at, ctx):
        x = ins[0]
        axis = at.get("axis", 0)
        keep = bool(at.get("keepdims", 1))
        if at.get("select_last_index", 0):
            n = x.shape[axis]
            return (n - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)).to(torch.int64)
        return fn(x, dim=axis, keepdim=keep).to(torch.int64)
    return rule


def _shape(ins, at, ctx):
    dims = list(ins[0].shape)
    start, end = at.get("start", 0), at.get("end", len(dims))
    return torch.tensor(dims[start:end] if "end" in at else dims[start:], dtype=torch.int64)


def _reshape(ins, at, ctx):
    x = ins[0]
    target = ints(ins[1]) if len(ins) > 1 else list(at["shape"])
    if not at.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _flatten(ins, at, ctx):
    x = ins[0]
    axis = at.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(lead, -1) if x.numel() else x.reshape(lead, int(np.prod(x.shape[axis:], dtype=np.int64)))


def _squeeze(ins, at, ctx):
    x = ins[0]
    axes = _axes(ins, at)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(ins, at, ctx):
    x = ins[0]
    axes = _axes(ins, at)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _transpose(ins, at, ctx):
    x = ins[0]
    return x.permute(at.get("perm", list(reversed(range(x.dim())))))


def _concat(ins, at, ctx):
    parts = [t for t in ins if t is not None]
    dtype = parts[0].dtype
    return torch.cat([p.to(dtype) for p in parts], dim=at["axis"])


def _split(ins, at, ctx, outputs: int):
    x = ins[0]
    axis = at.get("axis", 0)
    sizes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else at.get("split")
    if sizes is None:
        n = x.shape[axis]
        count = at.get("num_outputs", outputs)
        step = -(-n // count)
        sizes = [min(step, n - i * step) for i in range(count)]
    return list(torch.split(x, list(sizes), dim=axis))


def _slice(ins, at, ctx):
    x = ins[0]
    if ctx.opset < 10:
        starts, ends = list(at["starts"]), list(at["ends"])
        axes = list(at.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a %= x.dim()
        b, f, st = slice(s, e, st).indices(x.shape[a])  # Python's clamping is the spec's
        if st > 0:
            x = x.narrow(a, b, max(0, -(-(f - b) // st))) if st == 1 else \
                x.index_select(a, torch.arange(b, max(b, f), st, dtype=torch.int64))
        else:
            x = x.index_select(a, torch.arange(b, f, st, dtype=torch.int64))
    return x


def _gather(ins, at, ctx):
    x, idx = ins
    axis = at.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(torch.int64)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def _gather_elements(ins, at, ctx):
    x, idx = ins
    axis = at.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(torch.int64)
    return torch.gather(x, axis, idx)


def _scatter_elements(ins, at, ctx):
    x, idx, upd = ins
    if at.get("reduction", "none") not in ("none", b"none"):
        raise Unsupported("ScatterElements with a reduction")
    axis = at.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(torch.int64)
    return x.scatter(axis, idx, upd)


def _expand(ins, at, ctx):
    x = ins[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(ints(ins[1])))
    return x.expand(shape)


def _tile(ins, at, ctx):
    return ins[0].repeat(ints(ins[1]))


def _pad(ins, at, ctx):
    x = ins[0]
    mode = at.get("mode", "constant")
    if ctx.opset < 11:
        pads, value, axes = list(at["pads"]), at.get("value", 0.0), None
    else:
        pads = ints(ins[1])
        value = float(ins[2].reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None and ins[2].numel() else 0.0
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    axes = [a % x.dim() for a in axes] if axes is not None else list(range(x.dim()))
    n = len(axes)
    full = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    flat = []
    for a in reversed(range(x.dim())):
        flat += list(full.get(a, (0, 0)))
    if mode == "constant":
        return F.pad(x, flat, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None or any(flat[2 * (x.dim() - a - 1)] or flat[2 * (x.dim() - a - 1) + 1]
                                 for a in range(min(2, x.dim()))):
        raise Unsupported(f"Pad mode {mode} on these axes")
    return F.pad(x, flat[: 2 * (x.dim() - 2)], mode=torch_mode)


def _range(ins, at, ctx):
    start, limit, delta = (t.reshape(()) for t in ins)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _constant_of_shape(ins, at, ctx):
    value = at.get("value")
    shape = ints(ins[0])
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    v = torch.from_numpy(np.array(value).reshape(-1)[:1].copy())
    return v.reshape(()).expand(shape).clone() if shape else v.reshape(())


def _where(ins, at, ctx):
    c, a, b = ins
    return torch.where(c.to(torch.bool), a, b)


def _topk(ins, at, ctx):
    x = ins[0]
    k = ints(ins[1])[0] if len(ins) > 1 else at["k"]
    values, indices = torch.topk(x, k, dim=at.get("axis", -1), largest=bool(at.get("largest", 1)),
                                 sorted=bool(at.get("sorted", 1)))
    return [values, indices.to(torch.int64)]


def _one_hot(ins, at, ctx):
    idx, depth, values = ins
    d = int(depth.reshape(-1)[0])
    idx = torch.where(idx < 0, idx + d, idx).to(torch.int64)
    hot = F.one_hot(idx, d)
    axis = at.get("axis", -1)
    if axis != -1:
        hot = hot.movedim(-1, axis % hot.dim())
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot.bool(), on, off)


def _einsum(ins, at, ctx):
    return torch.einsum(at["equation"], *ins)


def _hard_sigmoid(ins, at, ctx):
    return torch.clamp(at.get("alpha", 0.2) * ins[0] + at.get("beta", 0.5), 0.0, 1.0)


def _prelu(ins, at, ctx):
    x, slope = ins
    return torch.where(x >= 0, x, x * slope)


def _leaky(ins, at, ctx):
    return F.leaky_relu(ins[0], at.get("alpha", 0.01))


def _elu(ins, at, ctx):
    return F.elu(ins[0], at.get("alpha", 1.0))


def _selu(ins, at, ctx):
    x = ins[0]
    alpha, gamma = at.get("alpha", 1.67326319217681884765625), at.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _pow(ins, at, ctx):
    a, b = ins
    if a.is_floating_point() and not b.is_floating_point():
        b = b.to(a.dtype)
    return torch.pow(a, b).to(a.dtype)


def _identity(ins, at, ctx):
    return ins[0]


def _cumsum(ins, at, ctx):
    x, axis = ins[0], int(ins[1].reshape(-1)[0])
    if at.get("exclusive", 0) or at.get("reverse", 0):
        raise Unsupported("CumSum exclusive or reverse")
    return torch.cumsum(x, dim=axis)


def _trilu(ins, at, ctx):
    k = int(ins[1].reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(ins[0], k) if at.get("upper", 1) else torch.tril(ins[0], k)


# Resize -------------------------------------------------------------------

def _source_coords(mode: str, out: int, n: int, scale: float) -> torch.Tensor:
    """Where each output position samples the input (ONNX's
    coordinate_transformation_mode), in float64."""
    i = torch.arange(out, dtype=torch.float64)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out > 1 else torch.zeros(out, dtype=torch.float64)
    if mode == "align_corners":
        return i * (n - 1) / (out - 1) if out > 1 else torch.zeros(out, dtype=torch.float64)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel_symmetric":
        adj = out / (scale * n)
        centre = n / 2 * (1 - adj)
        return centre + (i + 0.5) / scale - 0.5
    raise Unsupported(f"Resize coordinate_transformation_mode {mode}")


def _nearest(mode: str, x: torch.Tensor) -> torch.Tensor:
    if mode == "round_prefer_floor":
        return torch.ceil(x - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(x + 0.5)
    if mode == "floor":
        return torch.floor(x)
    if mode == "ceil":
        return torch.ceil(x)
    raise Unsupported(f"Resize nearest_mode {mode}")


def _resize(ins, at, ctx):
    x = ins[0]
    if at.get("antialias", 0) or at.get("axes") is not None or \
            at.get("keep_aspect_ratio_policy", "stretch") != "stretch" or at.get("exclude_outside", 0):
        raise Unsupported("Resize with antialias, axes, keep_aspect_ratio_policy or exclude_outside")
    if ctx.op == "Upsample" or ctx.opset < 11:
        scales_t = ins[1] if len(ins) > 1 else None
        scales = [float(v) for v in scales_t.reshape(-1).tolist()] if scales_t is not None else list(at["scales"])
        sizes = None
        coord = "asymmetric"
        mode = at.get("mode", "nearest")
        nearest = "floor"
    else:
        scales_t = ins[2] if len(ins) > 2 else None
        sizes_t = ins[3] if len(ins) > 3 else None
        scales = [float(v) for v in scales_t.reshape(-1).tolist()] if scales_t is not None and scales_t.numel() \
            else None
        sizes = ints(sizes_t) if sizes_t is not None and sizes_t.numel() else None
        coord = at.get("coordinate_transformation_mode", "half_pixel")
        mode = at.get("mode", "nearest")
        nearest = at.get("nearest_mode", "round_prefer_floor")
    if coord == "tf_crop_and_resize":
        raise Unsupported("Resize tf_crop_and_resize")
    if mode not in ("nearest", "linear", "bilinear"):
        raise Unsupported(f"Resize mode {mode}")
    if sizes is None:
        sizes = [int(math.floor(n * s)) for n, s in zip(x.shape, scales)]
        scales_used = scales
    else:
        scales_used = [o / n for o, n in zip(sizes, x.shape)]
    for axis, (n, out, scale) in enumerate(zip(x.shape, sizes, scales_used)):
        if out == n and scale == 1.0:
            continue
        src = _source_coords(coord, out, n, scale)
        if mode == "nearest":
            idx = _nearest(nearest, src).clamp(0, n - 1).to(torch.int64)
            x = x.index_select(axis, idx)
            continue
        src = src.clamp(0, n - 1)
        lo = torch.floor(src).to(torch.int64)
        hi = torch.clamp(lo + 1, max=n - 1)
        w = (src - lo.to(torch.float64)).to(x.dtype)
        shape = [1] * x.dim()
        shape[axis] = out
        w = w.reshape(shape)
        x = x.index_select(axis, lo) * (1 - w) + x.index_select(axis, hi) * w
    return x


def _depth_to_space(ins, at, ctx):
    x = ins[0]
    b = at["blocksize"]
    n, c, h, w = x.shape
    if at.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(ins, at, ctx):
    x = ins[0]
    b = at["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# -- recurrent cells ---------------------------------------------------------------------
_ACTIVATIONS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}
_CELLS = {"RNN": (1, ["Tanh"]), "GRU": (3, ["Sigmoid", "Tanh"]), "LSTM": (4, ["Sigmoid", "Tanh", "Tanh"])}


def _recurrent(op: str):
    """RNN, GRU and LSTM as the specification writes them: gates in its
    order (GRU z, r, h; LSTM i, o, f, c), W and R biases, initial states,
    peepholes, ``linear_before_reset``, ``clip``, forward / reverse /
    bidirectional. Sequence lengths shorter than the sequence, batch-first
    ``layout``, ``input_forget`` and activations other than Sigmoid, Tanh
    and Relu are not implemented (refused)."""
    gates, default = _CELLS[op]

    def rule(ins, at, ctx):
        x, w, r = ins[0], ins[1], ins[2]
        b = ins[3] if len(ins) > 3 else None
        lens = ins[4] if len(ins) > 4 else None
        h0 = ins[5] if len(ins) > 5 else None
        c0 = ins[6] if len(ins) > 6 and op == "LSTM" else None
        peep = ins[7] if len(ins) > 7 and op == "LSTM" else None
        if int(at.get("layout", 0)):
            raise Unsupported("layout=1 (batch first) is not implemented (nor run by onnxruntime)")
        seq, batch = x.shape[0], x.shape[1]
        if lens is not None and bool((lens != seq).any()):
            raise Unsupported("sequence lengths shorter than the sequence are not implemented")
        if op == "LSTM" and int(at.get("input_forget", 0)):
            raise Unsupported("input_forget=1 is not implemented")
        direction = at.get("direction", "forward")
        dirs = 2 if direction == "bidirectional" else 1
        names = at.get("activations") or default * dirs
        if len(names) != len(default) * dirs or any(n not in _ACTIVATIONS for n in names):
            raise Unsupported(f"activations {names} are not implemented")
        if at.get("activation_alpha") or at.get("activation_beta"):
            raise Unsupported("activation_alpha/beta are not implemented")
        clip = at.get("clip")
        hidden = r.shape[-1]
        ys, hs, cs = [], [], []
        for d in range(dirs):
            acts = [_ACTIVATIONS[n] for n in names[d * len(default):(d + 1) * len(default)]]
            if clip is not None:  # on the gates' inputs (onnxruntime leaves an LSTM's h(C_t) unclipped)
                acts = [(lambda fn: lambda v: fn(torch.clamp(v, -clip, clip)))(fn) if k < 2 else fn
                        for k, fn in enumerate(acts)]
            wb = b[d, :gates * hidden] if b is not None else 0.0
            rb = b[d, gates * hidden:] if b is not None else 0.0
            h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
            c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
            xw = torch.matmul(x, w[d].t()) + wb  # (seq, batch, gates*hidden)
            steps = range(seq - 1, -1, -1) if (direction == "reverse" or d == 1) else range(seq)
            out = [None] * seq
            for t in steps:
                h, c = _cell(op, acts, xw[t], h, c, r[d], rb, hidden, at, None if peep is None else peep[d])
                out[t] = h
            ys.append(torch.stack(out))
            hs.append(h)
            cs.append(c)
        y, yh, yc = torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)  # y: (seq, dirs, batch, hidden)
        return [y, yh, yc] if op == "LSTM" else [y, yh]

    return rule


def _cell(op, acts, xw, h, c, r, rb, hidden, at, peep):
    """One time step: ``xw`` is X_t W^T + Wb; returns (H_t, C_t)."""
    n = hidden
    if op == "RNN":
        return acts[0](xw + torch.matmul(h, r.t()) + rb), c
    if op == "GRU":
        f, g = acts
        hr = torch.matmul(h, r[:2 * n].t()) + (rb[:2 * n] if torch.is_tensor(rb) else rb)
        z = f(xw[:, :n] + hr[:, :n])
        rt = f(xw[:, n:2 * n] + hr[:, n:2 * n])
        rbh = rb[2 * n:] if torch.is_tensor(rb) else rb
        if int(at.get("linear_before_reset", 0)):
            cand = g(xw[:, 2 * n:] + rt * (torch.matmul(h, r[2 * n:].t()) + rbh))
        else:
            cand = g(xw[:, 2 * n:] + torch.matmul(rt * h, r[2 * n:].t()) + rbh)
        return (1 - z) * cand + z * h, c
    f, g, hh = acts
    pre = xw + torch.matmul(h, r.t()) + rb  # gates i, o, f, c
    pi, po, pf = (peep[:n], peep[n:2 * n], peep[2 * n:]) if peep is not None else (0.0, 0.0, 0.0)
    i = f(pre[:, :n] + pi * c)
    fg = f(pre[:, 2 * n:3 * n] + pf * c)
    c = fg * c + i * g(pre[:, 3 * n:])
    o = f(pre[:, n:2 * n] + po * c)
    return o * hh(c), c


def _unary(fn):
    return lambda ins, at, ctx: fn(ins[0])


RULES = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _pow, "Mod": _mod, "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add), "Mean": _mean,
    "Equal": _binary(torch.eq), "Greater": _binary(torch.gt), "Less": _binary(torch.lt),
    "GreaterOrEqual": _binary(torch.ge), "LessOrEqual": _binary(torch.le),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Xor": _binary(torch.logical_xor),
    "Not": _unary(torch.logical_not), "Where": _where,
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt), "Abs": _unary(torch.abs),
    "Neg": _unary(torch.neg), "Reciprocal": _unary(torch.reciprocal), "Erf": _unary(torch.erf),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "Round": _unary(torch.round),
    "Sign": _unary(torch.sign), "Sin": _unary(torch.sin), "Cos": _unary(torch.cos),
    "Softplus": _unary(F.softplus), "Softsign": _unary(F.softsign), "Mish": _unary(F.mish),
    "HardSwish": _unary(F.hardswish), "HardSigmoid": _hard_sigmoid, "LeakyRelu": _leaky, "Elu": _elu,
    "Selu": _selu, "PRelu": _prelu, "Gelu": _gelu, "Clip": _clip,
    "Identity": _identity, "Dropout": _identity, "Cast": _cast,
    "CastLike": lambda ins, at, ctx: ins[0].to(ins[1].dtype),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "MatMul": _binary(torch.matmul), "Gemm": _gemm, "Einsum": _einsum,
    "Conv": _conv, "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm, "SimplifiedLayerNormalization": _rms_norm,
    "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": _global(torch.mean), "GlobalMaxPool": _global(_global_max),
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "ReduceProd": _reduce("prod"), "ReduceL2": _reduce("l2"),
    "ReduceL1": _reduce("l1"), "ReduceSumSquare": _reduce("sumsquare"), "ReduceLogSumExp": _reduce("logsumexp"),
    "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin),
    "Shape": _shape, "Size": lambda ins, at, ctx: torch.tensor(ins[0].numel(), dtype=torch.int64),
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Concat": _concat, "Slice": _slice, "Gather": _gather,
    "GatherElements": _gather_elements, "ScatterElements": _scatter_elements, "Expand": _expand,
    "Tile": _tile, "Pad": _pad, "Range": _range, "ConstantOfShape": _constant_of_shape, "TopK": _topk,
    "OneHot": _one_hot, "CumSum": _cumsum, "Trilu": _trilu, "Resize": _resize, "Upsample": _resize,
    "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "RNN": _recurrent("RNN"), "GRU": _recurrent("GRU"), "LSTM": _recurrent("LSTM"),
}
MULTI = {"Split": _split}  # rules that need the node's output count


def attributes(node) -> dict:
    """A node's attributes as Python values (strings as str)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == a.TENSOR:
            v = numpy_helper.to_array(v)
        elif a.type == a.STRING:
            v = v.decode()
        elif a.type == a.STRINGS:
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def has_rule(op: str, domain: str) -> bool:
    return domain in ("", "ai.onnx") and (op in RULES or op in MULTI)


__all__ = ["RULES", "MULTI", "DTYPES", "Unsupported", "attributes", "has_rule", "ints"]
