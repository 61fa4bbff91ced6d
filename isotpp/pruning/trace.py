"""Channel dependency groups traced from a model's forward program.

``trace_groups(model, x)`` traces ``model(x)`` (eval mode) to a jaxpr and
follows every channel axis through it, in the spirit of Torch-Pruning's
``DependencyGraph`` but over the program rather than over module hooks:

* a conv / dense kernel that is an ``nnx.Param`` *produces* a channel set on
  its output axis and *consumes* the channel sets on its contracted input axis;
  a kernel held in another variable type (an option-A shortcut's fixed map) is
  a fixed map: its output axis joins the channel set it writes into
  (``out_fixed``) without being a producer;
* a depthwise convolution (one input channel per group) carries its input's
  channels through, its kernel and bias joining that channel set;
* element-wise operations carry channels; where two channel sets meet (a
  residual add, a gate) they become one *stream*; where a per-channel variable
  meets them (a bias, BatchNorm's scale, bias and statistics) it joins the set;
* transposes, broadcasts, pooling windows that leave channels alone,
  concatenation (a block at an offset) and reshapes that merge channels with
  positions (flatten into a dense layer: the interleave) are followed.

What cannot be followed (a reduction over channels such as LayerNorm's
statistics, a slice or gather of channels, an unknown primitive, a product of
two activations) makes the channel sets it touches *unprunable*, with a reason
naming the operation and the source line; asking to prune such a group is
refused with that reason (:func:`isotpp.pruning.groups.resolve_ratios`). The result is
the :class:`~isotpp.pruning.groups.Group` / :class:`~isotpp.pruning.groups.Slot` structure that
plans, penalties and surgery walk, named by the module's own attribute paths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx
from jax._src import source_info_util
from jax.extend.core import Literal

from isotpp.errors import UserError
from isotpp.models.program import example_input, forward_jaxpr
from isotpp.pruning.groups import Group, Slot

CLASSIFIER = "it is the classifier (its outputs are the classes)"

ELEMENTWISE = frozenset((
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt",
    "ceil", "clamp", "copy", "copy_p", "cos", "cosh", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2",
    "expm1", "floor", "ge", "gt", "imag", "integer_pow", "is_finite", "le", "lgamma", "digamma", "log",
    "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow", "real",
    "reduce_precision", "rem", "round", "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square", "sub",
    "tan", "tanh", "xor", "convert_element_type", "stop_gradient",
))
REDUCTIONS = frozenset((
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin",
))
WINDOWS = frozenset((
    "reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window",
))
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
         "remat": "jaxpr", "checkpoint": "jaxpr", "custom_lin": None}


# --------------------------------------------------------------------------
# Channel sets (union-find) and per-axis facts.
# --------------------------------------------------------------------------


class Space:
    """A set of channels that moves together; merged with others by residual adds."""

    def __init__(self, size: int, seq: int):
        self.size = size
        self.seq = seq  # creation order: forward order of first appearance
        self.parent: Space | None = None
        # (discovery order, variable, axis, role, offset, period, repeat, inner)
        self.slots: list[tuple[int, str, int, str, int, int, int, int]] = []
        self.producers: list[tuple[int, str]] = []
        self.why_not: str = ""

    def find(self) -> Space:
        s = self
        while s.parent is not None:
            s = s.parent
        return s


def _union(a: Space, b: Space, where: str) -> Space:
    a, b = a.find(), b.find()
    if a is b:
        return a
    if a.size != b.size:  # pragma: no cover - shapes of element-wise operands agree
        raise AssertionError(f"channel sets of sizes {a.size} and {b.size} meet at {where}")
    if b.seq < a.seq:
        a, b = b, a
    b.parent = a
    a.slots += b.slots
    a.producers += b.producers
    a.why_not = a.why_not or b.why_not
    return a


@dataclasses.dataclass(frozen=True)
class Seg:
    """Channel c of ``space`` sits at p·period + offset + c·inner + q (p < repeat, q < inner)."""

    space: Space
    offset: int = 0
    period: int = 0  # 0: the set's size (only meaningful with repeat > 1)
    repeat: int = 1
    inner: int = 1

    def key(self):
        return (self.offset, self.period, self.repeat, self.inner)


@dataclasses.dataclass(frozen=True)
class Chan:
    segs: tuple[Seg, ...]


@dataclasses.dataclass(frozen=True)
class FromVar:
    """The axis indexes axis ``axis`` of these model variables (value not yet mixed with data)."""

    refs: frozenset  # of (variable name, axis)


BCAST = "bcast"  # constant along this axis (size 1 or broadcast)


@dataclasses.dataclass
class Val:
    axes: list  # per axis: Chan | FromVar | BCAST | None (untracked)
    data: bool = False  # depends on the input
    taint: frozenset = frozenset()  # spaces touched by an operation that could not be followed (with reasons)


@dataclasses.dataclass(frozen=True)
class Traced:
    """The result of a trace: groups, and conv/dense layers in program order."""

    groups: tuple
    layers: tuple[str, ...]


# --------------------------------------------------------------------------
# The interpreter.
# --------------------------------------------------------------------------


def _where(eqn) -> str:
    """The innermost source line outside JAX and Flax that made this operation (file:line (function))."""
    try:

        for f in source_info_util.user_frames(eqn.source_info.traceback):
            if "/flax/" not in f.file_name:
                return f"{f.file_name}:{f.start_line} ({f.function_name})"
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - private API: the location is a courtesy
        return "an unknown location"


class _Tracer:
    def __init__(self, var_info: dict[str, tuple[str, str, int]]):
        self.var_info = var_info  # name -> (variable kind, owner module class, ndim)
        self.spaces: list[Space] = []
        self.layers: list[str] = []
        self.depthwise: set[str] = set()
        self.n_slots = 0  # discovery order of slots

    # ---- helpers
    def space(self, size: int) -> Space:
        s = Space(size, len(self.spaces))
        self.spaces.append(s)
        return s

    def block(self, spaces, why: str):
        for s in spaces:
            r = s.find()
            if not r.why_not:
                r.why_not = why

    def add_slot(self, seg: Seg, param: str, axis: int, role: str):
        r = seg.space.find()
        ndim = self.var_info[param][2]
        if ndim >= 2:
            axis = axis - ndim
        self.n_slots += 1
        r.slots.append((self.n_slots, param, axis, role, seg.offset, seg.period, seg.repeat, seg.inner))

    def role_of(self, param: str, out: bool) -> str:
        kind, owner, ndim = self.var_info[param]
        if kind == "BatchStat":
            return "bn_stat"
        if kind != "Param":
            return "out_fixed" if out else "in"
        if owner in ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"):
            return "bn"
        return "out" if (out and ndim >= 2) else "bias"

    @staticmethod
    def spaces_of(info) -> list[Space]:
        return [s.space for s in info.segs] if isinstance(info, Chan) else []

    # ---- running a jaxpr
    def run(self, jaxpr, env_in: Sequence[Val], consts: Sequence[Any] = ()) -> list[Val]:
        env: dict[Any, Val] = {}

        def read(v) -> Val:
            if isinstance(v, Literal) or v not in env:
                shape = getattr(getattr(v, "aval", None), "shape", ())
                return Val([BCAST if d == 1 else None for d in shape])
            return env[v]

        for v, val in zip(jaxpr.constvars, consts):
            env[v] = val
        for v, val in zip(jaxpr.invars, env_in):
            env[v] = val
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins: list[Val]) -> list[Val]:
        name = eqn.primitive.name
        where = _where(eqn)
        out_avals = [v.aval for v in eqn.outvars]
        data = any(v.data for v in ins)
        taint = frozenset().union(*[v.taint for v in ins]) if ins else frozenset()

        if name in CALLS or name == "cond":
            return self.call(eqn, ins, where)
        if name in ELEMENTWISE:
            return [self.elementwise(eqn, ins, where)]
        if name == "broadcast_in_dim":
            (x,) = ins[:1]
            shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
            in_shape = eqn.invars[0].aval.shape
            axes = [BCAST] * len(shape)
            for i, j in enumerate(dims):
                axes[j] = BCAST if (in_shape[i] == 1 and shape[j] != 1) else x.axes[i]
            return [Val(axes, x.data, x.taint)]
        if name == "transpose":
            x = ins[0]
            return [Val([x.axes[p] for p in eqn.params["permutation"]], x.data, x.taint)]
        if name == "squeeze":
            x = ins[0]
            drop = {d % len(x.axes) for d in eqn.params["dimensions"]}
            return [Val([a for i, a in enumerate(x.axes) if i not in drop], x.data, x.taint)]
        if name == "expand_dims":
            x = ins[0]
            axes = list(x.axes)
            for d in sorted(eqn.params["dimensions"]):
                axes.insert(d, BCAST)
            return [Val(axes, x.data, x.taint)]
        if name == "reshape":
            return [self.reshape(eqn, ins[0], where)]
        if name in REDUCTIONS:
            x = ins[0]
            red = set(eqn.params["axes"])
            hit = [s for i in red for s in self.spaces_of(x.axes[i])]
            t = x.taint | {(s, f"{name} over channels at {where}") for s in hit}
            return [Val([a for i, a in enumerate(x.axes) if i not in red], x.data, t)]
        if name in WINDOWS:
            x = ins[0]
            win, strides = eqn.params["window_dimensions"], eqn.params["window_strides"]
            pads = eqn.params.get("padding", ((0, 0),) * len(win))
            axes, t = [], x.taint
            for i, a in enumerate(x.axes):
                moved = win[i] != 1 or strides[i] != 1 or tuple(pads[i]) != (0, 0)
                if moved and isinstance(a, Chan):
                    t |= {(s, f"{name} across channels at {where}") for s in self.spaces_of(a)}
                    a = None
                axes.append(a if not moved else (None if a is not BCAST else BCAST))
            return [Val(axes, x.data, t)]
        if name == "slice":
            x = ins[0]
            shape = eqn.invars[0].aval.shape
            strides = eqn.params["strides"] or (1,) * len(shape)
            axes, t = [], x.taint
            for i, a in enumerate(x.axes):
                full = eqn.params["start_indices"][i] == 0 and eqn.params["limit_indices"][i] == shape[i] and strides[i] == 1
                if not full and isinstance(a, Chan):
                    t |= {(s, f"a slice of channels at {where}") for s in self.spaces_of(a)}
                axes.append(a if full else (BCAST if a is BCAST else None))
            return [Val(axes, x.data, t)]
        if name == "concatenate":
            return [self.concatenate(eqn, ins, where)]
        if name == "pad":
            return [self.pad(eqn, ins, where)]
        if name == "dot_general":
            return [self.dot_general(eqn, ins, where)]
        if name == "conv_general_dilated":
            return [self.conv(eqn, ins, where)]
        if name == "iota":
            return [Val([None] * len(out_avals[0].shape))]
        # anything else: channels cannot be followed through it
        hit = [s for v in ins for a in v.axes for s in self.spaces_of(a)]
        t = taint | {(s, f"{name} at {where}") for s in hit}
        return [Val([None] * len(a.shape), data, t) for a in out_avals]

    def call(self, eqn, ins, where):
        name = eqn.primitive.name
        if name == "cond":
            results = [self.run(br.jaxpr, ins[1:], []) for br in eqn.params["branches"]]
            outs = []
            for vals in zip(*results):
                outs.append(self._merge_branches(vals, where))
            return outs
        key = CALLS[name]
        sub = eqn.params.get(key) if key else None
        if sub is None:
            for k in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                if k in eqn.params:
                    sub = eqn.params[k]
                    break
        if sub is None:  # pragma: no cover - every call primitive carries its jaxpr
            raise UserError(f"cannot trace channels through {name} at {where}: no inner program")
        closed = sub if hasattr(sub, "consts") else None
        jaxpr = sub.jaxpr if closed is not None else sub
        consts = [Val([None] * np.ndim(c)) for c in (closed.consts if closed is not None else [])]
        return self.run(jaxpr, ins[: len(jaxpr.invars)], consts)

    def _merge_branches(self, vals, where):
        axes = []
        for per_axis in zip(*[v.axes for v in vals]):
            chans = [a for a in per_axis if isinstance(a, Chan)]
            if chans:
                axes.append(self._unify(chans, where))
            elif all(a is BCAST for a in per_axis):
                axes.append(BCAST)
            else:
                axes.append(next((a for a in per_axis if isinstance(a, FromVar)), None))
        return Val(axes, any(v.data for v in vals), frozenset().union(*[v.taint for v in vals]))

    def _unify(self, chans: list[Chan], where: str) -> Chan | None:
        first = chans[0]
        for c in chans[1:]:
            if len(c.segs) != len(first.segs) or any(a.key() != b.key() or a.space.find().size != b.space.find().size
                                                     for a, b in zip(c.segs, first.segs)):
                self.block([s.space for ch in chans for s in ch.segs],
                           f"channel sets of different layouts meet at {where} (e.g. a zero-padded shortcut written "
                           "with jnp.pad: hold it as a fixed channel map, isotpp.models.resnet_cifar.ZeroPadShortcut)")
                return first
            for a, b in zip(c.segs, first.segs):
                _union(a.space, b.space, where)
        return first

    def elementwise(self, eqn, ins, where) -> Val:
        out_shape = eqn.outvars[0].aval.shape
        rank = len(out_shape)
        shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars]
        data = any(v.data for v in ins)
        taint = frozenset().union(*[v.taint for v in ins])
        axes = []
        for ax in range(rank):
            infos = []
            for v, shp in zip(ins, shapes):
                if len(shp) != rank:
                    continue  # a scalar operand
                a = v.axes[ax]
                if a is BCAST or (shp[ax] == 1 and not (isinstance(a, Chan) and out_shape[ax] == 1)):
                    continue  # broadcast along this axis (a group of one channel is not: it meets its stream)
                infos.append((a, v.data))
            chans = [a for a, _ in infos if isinstance(a, Chan)]
            refs = frozenset().union(*[a.refs for a, _ in infos if isinstance(a, FromVar)])
            untracked = [d for a, d in infos if a is None]
            if chans:
                chan = self._unify(chans, where)
                for ref in refs:
                    for seg in chan.segs:
                        self.add_slot(seg, ref[0], ref[1], self.role_of(ref[0], out=False))
                if untracked:
                    self.block(self.spaces_of(chan),
                               f"{eqn.primitive.name} at {where} combines its channels with an array isotpp does not "
                               "track (the model input, or a computed array)")
                if taint:
                    why = next(iter(taint))[1]
                    taint |= {(s, why) for s in self.spaces_of(chan)}
                axes.append(chan)
            elif refs and not untracked:  # indexed by the variables along this axis (other factors broadcast)
                axes.append(FromVar(refs))
            elif not infos:
                axes.append(BCAST)
            else:
                axes.append(None)
        return Val(axes, data, taint)

    def reshape(self, eqn, x: Val, where: str) -> Val:
        in_shape = tuple(eqn.invars[0].aval.shape)
        out_shape = tuple(eqn.outvars[0].aval.shape)
        out_axes: list = [BCAST if d == 1 else None for d in out_shape]
        taint = x.taint
        in_idx = [i for i, d in enumerate(in_shape) if d != 1]
        out_idx = [j for j, d in enumerate(out_shape) if d != 1]
        i = j = 0
        while i < len(in_idx) and j < len(out_idx):
            bi, bj = [in_idx[i]], [out_idx[j]]
            pi, pj = in_shape[in_idx[i]], out_shape[out_idx[j]]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    bi.append(in_idx[i])
                    pi *= in_shape[in_idx[i]]
                    i += 1
                else:
                    bj.append(out_idx[j])
                    pj *= out_shape[out_idx[j]]
                    j += 1
            infos = [x.axes[k] for k in bi]
            if len(bi) == 1 and len(bj) == 1:
                out_axes[bj[0]] = infos[0]
                continue
            chans = [(k, a) for k, a in zip(bi, infos) if isinstance(a, Chan)]
            if not chans:
                fill = BCAST if all(a is BCAST for a in infos) else None
                for k in bj:
                    out_axes[k] = fill
                continue
            got = self._reshape_block(bi, bj, in_shape, out_shape, chans) if len(chans) == 1 else None
            if got is None:
                taint |= {(s, f"a reshape of channels at {where}") for _, a in chans for s in self.spaces_of(a)}
                continue
            for k, a in got.items():
                out_axes[k] = a
        return Val(out_axes, x.data, taint)

    @staticmethod
    def _reshape_block(bi, bj, in_shape, out_shape, chans):
        (k, chan), = chans
        if len(bj) == 1:  # merge: positions outside k repeat the channel layout
            pos = bi.index(k)
            stride = math.prod(in_shape[d] for d in bi[pos + 1:])
            outer = math.prod(in_shape[d] for d in bi[:pos])
            length = in_shape[k]
            segs = []
            for s in chan.segs:
                n = s.space.find().size
                period = s.period or n
                if s.repeat == 1:
                    segs.append(Seg(s.space, s.offset * stride, length * stride, outer, s.inner * stride))
                elif period * s.repeat == length:
                    segs.append(Seg(s.space, s.offset * stride, period * stride, outer * s.repeat, s.inner * stride))
                else:
                    return None
            return {bj[0]: Chan(tuple(segs))}
        if len(bi) == 1:  # split: the channels must land in the last output axis
            last = out_shape[bj[-1]]
            length = in_shape[k]
            segs = []
            for s in chan.segs:
                n = s.space.find().size
                period = s.period or n
                if s.inner != 1 or s.offset + n > last:
                    return None
                if not ((s.repeat == 1 and length == last) or (period == last and period * s.repeat == length)):
                    return None
                segs.append(Seg(s.space, s.offset))
            return {**{d: None for d in bj[:-1]}, bj[-1]: Chan(tuple(segs))}
        return None

    def concatenate(self, eqn, ins, where) -> Val:
        dim = eqn.params["dimension"]
        rank = len(ins[0].axes)
        axes = []
        for ax in range(rank):
            if ax != dim:
                chans = [v.axes[ax] for v in ins if isinstance(v.axes[ax], Chan)]
                axes.append(self._unify(chans, where) if chans else (
                    BCAST if all(v.axes[ax] is BCAST for v in ins) else None))
                continue
            segs, off = [], 0
            for v, var in zip(ins, eqn.invars):
                a = v.axes[ax]
                if isinstance(a, Chan):
                    segs += [dataclasses.replace(s, offset=s.offset + off) for s in a.segs]
                off += var.aval.shape[ax]
            axes.append(Chan(tuple(segs)) if segs else None)
        return Val(axes, any(v.data for v in ins), frozenset().union(*[v.taint for v in ins]))

    def pad(self, eqn, ins, where) -> Val:
        x = ins[0]
        axes, taint = [], x.taint
        for a, (lo, hi, interior) in zip(x.axes, eqn.params["padding_config"]):
            if (lo, hi, interior) == (0, 0, 0):
                axes.append(a)
            elif isinstance(a, Chan) and lo >= 0 and interior == 0 and all(s.repeat == 1 for s in a.segs):
                axes.append(Chan(tuple(dataclasses.replace(s, offset=s.offset + lo) for s in a.segs)))
            else:
                taint |= {(s, f"padding of channels at {where}") for s in self.spaces_of(a)}
                axes.append(None)
        return Val(axes, x.data, taint)

    def _contract(self, act: Val, act_axis: int, w: Val, w_axis: int, where: str):
        """Channels of ``act`` on ``act_axis`` are read through axis ``w_axis`` of weights ``w``."""
        a, b = act.axes[act_axis], w.axes[w_axis]
        if not isinstance(a, Chan):
            return
        if isinstance(b, FromVar):
            for ref in b.refs:
                for seg in a.segs:
                    self.add_slot(seg, ref[0], ref[1], "in")
        else:
            self.block(self.spaces_of(a), f"its channels are contracted with an array that is not a model variable at {where}")

    def _produce(self, w: Val, w_axis: int, size: int, layer_hint: str) -> Chan | None:
        b = w.axes[w_axis]
        if not isinstance(b, FromVar):
            return None
        space = self.space(size)
        for name, axis in sorted(b.refs):
            role = self.role_of(name, out=True)
            seg = Seg(space)
            self.add_slot(seg, name, axis, role)
            if role == "out":
                layer = name.rpartition(".")[0]
                space.producers.append((space.seq, layer))
                if layer not in self.layers:
                    self.layers.append(layer)
        return Chan((Seg(space),))

    def _taint_to_blocks(self, *vals):
        for v in vals:
            for s, why in v.taint:
                self.block([s], f"its channels pass through {why}")

    def dot_general(self, eqn, ins, where) -> Val:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        self._taint_to_blocks(lhs, rhs)
        if lhs.data and rhs.data:
            hit = [s for v in (lhs, rhs) for a in v.axes for s in self.spaces_of(a)]
            self.block(hit, f"a product of two activations (attention?) at {where}")
            return Val([None] * len(eqn.outvars[0].aval.shape), True)
        if rhs.data and not lhs.data:  # weights on the left
            lhs, rhs, lc, rc, lb, rb, swapped = rhs, lhs, rc, lc, rb, lb, True
        else:
            swapped = False
        for a_ax, w_ax in zip(lc, rc):
            self._contract(lhs, a_ax, rhs, w_ax, where)
        shape_r = eqn.invars[1 if not swapped else 0].aval.shape
        batch = [lhs.axes[d] for d in lb]
        lhs_free = [lhs.axes[d] for d in range(len(lhs.axes)) if d not in lc and d not in lb]
        rhs_free = []
        for d in range(len(rhs.axes)):
            if d in rc or d in rb:
                continue
            made = self._produce(rhs, d, shape_r[d], "") if lhs.data else None
            rhs_free.append(made if made is not None else (rhs.axes[d] if not lhs.data else None))
        axes = batch + (rhs_free + lhs_free if swapped else lhs_free + rhs_free)
        return Val(axes, lhs.data or rhs.data)

    def conv(self, eqn, ins, where) -> Val:
        lhs, rhs = ins
        self._taint_to_blocks(lhs, rhs)
        dn = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        groups = eqn.params["feature_group_count"]
        rank = len(eqn.outvars[0].aval.shape)
        axes: list = [None] * rank
        if eqn.params.get("batch_group_count", 1) != 1 or rhs.data:
            hit = [s for v in (lhs, rhs) for a in v.axes for s in self.spaces_of(a)]
            self.block(hit, f"a convolution isotpp cannot follow at {where}")
            return Val(axes, True)
        c_in = eqn.invars[0].aval.shape[lhs_spec[1]]
        c_out = eqn.invars[1].aval.shape[rhs_spec[0]]
        feat = lhs.axes[lhs_spec[1]]
        if groups == 1:
            self._contract(lhs, lhs_spec[1], rhs, rhs_spec[1], where)
            made = self._produce(rhs, rhs_spec[0], c_out, "")
            axes[out_spec[1]] = made
        elif c_in == groups:  # depthwise: output channel j reads input channel j // m
            m = c_out // c_in
            if isinstance(feat, Chan):
                segs = tuple(Seg(s.space, s.offset * m, (s.period or s.space.find().size) * m, s.repeat, s.inner * m)
                             for s in feat.segs)
                chan = Chan(segs)
                w = rhs.axes[rhs_spec[0]]
                if isinstance(w, FromVar):
                    for name, ax in sorted(w.refs):
                        role = self.role_of(name, out=True)
                        for seg in segs:
                            self.add_slot(seg, name, ax, role)
                        if role == "out":
                            layer = name.rpartition(".")[0]
                            self.depthwise.add(layer)
                            for seg in segs:
                                r = seg.space.find()
                                r.producers.append((len(self.spaces), layer))
                            if layer not in self.layers:
                                self.layers.append(layer)
                else:
                    self.block(self.spaces_of(feat), f"a depthwise convolution with a computed kernel at {where}")
                axes[out_spec[1]] = chan
            else:
                axes[out_spec[1]] = self._produce(rhs, rhs_spec[0], c_out, "")
        else:
            self.block(self.spaces_of(feat), f"a grouped convolution with {c_in // groups} channels per group at "
                                            f"{where} (isotpp prunes depthwise convolutions only)")
            axes[out_spec[1]] = None
        return Val(axes, True)


# --------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------

_ROLE_RANK = {"out": 0, "bias": 1, "bn": 2, "bn_stat": 3, "out_fixed": 4, "in": 5}


def _variable_info(model: nnx.Module) -> dict[str, tuple[str, str, int]]:
    owners = {".".join(str(p) for p in path): type(node).__name__
              for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
    info = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        name = ".".join(str(p) for p in path)
        kind = "Param" if isinstance(var, nnx.Param) else "BatchStat" if isinstance(var, nnx.BatchStat) else "Other"
        owner = owners.get(".".join(str(p) for p in path[:-1]), "")
        info[name] = (kind, owner, len(var.shape))
    return info


def _stage(layer: str, zoo: bool) -> str:
    """A stream is named after the top-level modules of its producers; the zoo's ResNets call their
    root-level first conv the stem (their declared ``streams`` mark them)."""
    head, sep, _ = layer.partition(".")
    return head if sep else ("stem" if zoo else layer)


def trace_groups(model: nnx.Module, x=None) -> Traced:
    """Trace ``model(x)`` in eval mode and return its channel groups (see the module docstring)."""

    spec = example_input(model, x)
    closed, names, leaves = forward_jaxpr(model, spec)
    info = _variable_info(model)
    tracer = _Tracer(info)
    env = [Val([FromVar(frozenset({(n, k)})) for k in range(len(leaf.shape))]) for n, leaf in zip(names, leaves)]
    env.append(Val([None] * len(spec.shape), data=True))
    consts = [Val([None] * np.ndim(c)) for c in closed.consts]
    outs = tracer.run(closed.jaxpr, env, consts)
    for o in outs:
        tracer._taint_to_blocks(o)
        for a in o.axes:
            for s in tracer.spaces_of(a):
                r = s.find()
                r.why_not = r.why_not or CLASSIFIER
    order = {layer: i for i, layer in enumerate(tracer.layers)}
    streams = {frozenset(s) for s in getattr(model, "streams", ()) if len(s) > 0}
    groups = []
    roots = {id(s.find()): s.find() for s in tracer.spaces}
    for r in roots.values():
        layers = tuple(sorted(dict.fromkeys(layer for _, layer in r.producers), key=order.__getitem__))
        if not layers:
            continue
        seen, slots = set(), []
        for rec in sorted(r.slots, key=lambda t: (_ROLE_RANK[t[3]], t[0])):
            _, param, axis, role, off, per, rep, inner = rec
            per = per if rep > 1 else 0
            slot = Slot(param, axis, role, rep, off, per if per != r.size else 0, inner)
            if slot not in seen:
                seen.add(slot)
                slots.append(slot)
        own = [layer for layer in layers if layer not in tracer.depthwise] or list(layers)
        is_stream = len(own) > 1 or any(s.role == "out_fixed" for s in slots) or frozenset(layers) in streams
        name = "stream:" + "+".join(dict.fromkeys(_stage(layer, bool(streams)) for layer in own)) if is_stream else own[0]
        why = r.why_not
        if not why and r.size < 2:
            why = "it has a single channel"
        groups.append(Group(name, layers, r.size, tuple(slots), prunable=not why, why_not=why))
    groups.sort(key=lambda g: order[g.layers[0]])
    names_seen: dict[str, int] = {}
    for g in groups:
        names_seen[g.name] = names_seen.get(g.name, 0) + 1
    if any(n > 1 for n in names_seen.values()):  # two streams under one stage name: name them by their first layer
        groups = [dataclasses.replace(g, name=f"stream:{g.layers[0]}") if names_seen[g.name] > 1 else g
                  for g in groups]
    return Traced(tuple(groups), tuple(tracer.layers))
