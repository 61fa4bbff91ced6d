"""Weights from PyTorch: torchvision / reference-code state dicts <-> isotpp models.

isotpp's layer names mirror the PyTorch code (``layer1.0.conv1``,
``features.4``, ``net.2``), so a torch state-dict key is the isotpp layer name
plus a torch attribute; only the array layouts differ:

- conv ``kernel`` (kh, kw, in, out) <-> ``weight`` (out, in, kh, kw);
- dense ``kernel`` (in, out) <-> ``weight`` (out, in);
- ``bias`` <-> ``bias``;
- BatchNorm ``scale`` / ``bias`` / ``mean`` / ``var`` <-> ``weight`` / ``bias`` /
  ``running_mean`` / ``running_var``; ``num_batches_tracked`` is ignored on
  import and written as 0 on export;
- the option-A channel map ``downsample.proj`` of CIFAR ResNets has no torch
  counterpart (the reference pads with zeros): the model's own is kept.

A dense layer that reads a flattened feature map (LeNet-5's ``fc1`` when
conv3 leaves more than 1x1, an MLP on multi-channel images) sees its inputs in
H, W, C order here but C, H, W order in torch: its input rows are permuted on
the way in and out, so the converted network computes the same function on the
same images (NHWC here, NCHW there). Which layers read a flattened map, and
how, is read from the model's traced channel groups (the ``in`` slot's
:attr:`~isotpp.pruning.groups.Slot.interleave`; :mod:`isotpp.pruning.trace`), not
re-derived here; a dense layer that reads the model's input reads it
flattened from ``input_shape``.

Typical use (ImageNet runs start from torchvision's pretrained weights, which
the user downloads elsewhere)::

    from isotpp.pruning.torch_convert import convert_file
    convert_file("resnet50-0676ba61.pth", "resnet50", "resnet50.npz")
    # later: isotpp.pruning.model_file.load_model("resnet50.npz")

PyTorch is needed only to read ``.pth`` files (``pip install isotpp[torch]``);
state dicts of numpy arrays convert without it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import (
    BuildConfig,
    create_model,
    iter_modules,
    layer_names,
    widths_of,
)
from isotpp.models.program import flat_arrays
from isotpp.models.resnet_cifar import ZeroPadShortcut
from isotpp.pruning.groups import Slot, channel_groups, program_layers
from isotpp.pruning.model_file import save_model

__all__ = [
    "convert_file",
    "from_torch_state_dict",
    "infer_widths",
    "load_torch_checkpoint",
    "to_torch_state_dict",
]

# Keys of wrappers around a state dict, in order of preference: the reference
# saves {"arch", "model" (a pickled module), "state_dict", ...}.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Path components added by DataParallel / DistributedDataParallel ("module")
# and torch.compile ("_orig_mod"); isotpp layer names never contain them.
_WRAPPER_PARTS = ("module", "_orig_mod")
_IGNORED_SUFFIX = ".num_batches_tracked"
_BN_KEYS = (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))


@dataclasses.dataclass(frozen=True, eq=False)
class _Entry:
    """One model variable and the torch tensor it corresponds to."""

    layer: str  # dotted module name, "layer1.0.conv1"
    attr: str  # "kernel", "bias", "scale", "mean", "var"
    key: str  # torch key, "layer1.0.conv1.weight"
    torch_shape: tuple[int, ...]
    kind: str  # "conv", "dense", "vector"
    order: np.ndarray | None = None  # dense after a flatten: the torch input index of each kernel row
    classifier: bool = False


def _fmt(items, limit: int = 4) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _arch(model) -> str:
    return str(getattr(model, "arch", type(model).__name__))


def _is_abstract(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


# --------------------------------------------------------------------------
# The correspondence between a model's variables and torch keys
# --------------------------------------------------------------------------


def _modules(model) -> list[tuple[str, nnx.Module]]:
    return iter_modules(model)


def _fixed_maps(model) -> list[tuple[str, nnx.Module]]:
    """Option-A shortcuts: modules holding a fixed channel map (not in torch)."""

    return [(n, m) for n, m in _modules(model) if isinstance(m, ZeroPadShortcut)]


def _torch_order(slot: Slot, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(isotpp positions, torch positions) along a dense kernel's input axis of the channels of ``slot``.

    NHWC flattening puts channel k of position p at p · C + k here, NCHW at
    k · P + p in torch (C channels of the map, P positions; ``slot`` says
    where the group's channels sit among the C: offset, inner).
    """
    here = slot.position_grid(size)  # (channel, repeat · inner): p · period + offset + c · inner + q
    p = np.repeat(np.arange(slot.interleave), slot.inner)[None, :]
    q = np.tile(np.arange(slot.inner), slot.interleave)[None, :]
    k = slot.offset + np.arange(size)[:, None] * slot.inner + q
    return here.reshape(-1), (k * slot.interleave + p).reshape(-1)


def _flatten_orders(model, x) -> tuple[dict[str, np.ndarray], str | None]:
    """From the traced channel groups: per dense layer that reads a flattened multi-position map the
    torch input index of each of its input rows; and the classifier (the program's last layer)."""
    groups = channel_groups(model, x)
    program = program_layers(model, x)
    shapes = {k: tuple(v.shape) for k, v in flat_arrays(nnx.state(model)).items()}
    kernels = {s.param.rpartition(".")[0]: s.param for g in groups for s in g.slots_with("out")}
    dense = {n for n in program if len(shapes[kernels[n]]) == 2}
    reads: dict[str, list[tuple[Slot, int]]] = {}
    for g in groups:
        for s in g.slots_with("in"):
            if s.param.rpartition(".")[0] in dense:
                reads.setdefault(s.param.rpartition(".")[0], []).append((s, g.size))
    input_shape = tuple(getattr(model, "input_shape", ()) or ())
    for layer in dense - set(reads):  # reads the model's input, flattened (an MLP on images)
        if len(input_shape) == 3 and shapes[kernels[layer]][0] == math.prod(input_shape):
            reads[layer] = [(Slot(kernels[layer], -2, "in", math.prod(input_shape[:2])), input_shape[-1])]
    orders = {}
    for layer, slots in reads.items():
        if all(s.interleave == 1 for s, _ in slots):
            continue  # one position per channel: the same order in both layouts
        n = shapes[kernels[layer]][0]
        order = np.arange(n)
        for s, size in slots:
            here, there = _torch_order(s, size)
            order[here] = there
        if not np.array_equal(np.sort(order), np.arange(n)):
            raise UserError(f"{_arch(model)}: the inputs of {layer} are not one flattened feature map: "
                            "this model cannot be converted")
        orders[layer] = order
    return orders, (program[-1] if program else None)


def _plan(model, x=None) -> list[_Entry]:
    """Every variable of ``model`` (option-A maps aside) with its torch key, in forward order."""

    modules = _modules(model)
    flat_inputs, classifier = _flatten_orders(model, x)
    entries: list[_Entry] = []
    covered: set[str] = set()
    for name, m in modules:
        if isinstance(m, nnx.Conv | nnx.Linear):
            conv = isinstance(m, nnx.Conv)
            shape = tuple(m.kernel.shape)
            tshape = (shape[-1], shape[-2], *shape[:-2]) if conv else (shape[1], shape[0])
            entries.append(_Entry(name, "kernel", f"{name}.weight", tshape, "conv" if conv else "dense",
                                  flat_inputs.get(name), name == classifier))
            covered.add(f"{name}.kernel")
            if m.bias is not None:
                entries.append(_Entry(name, "bias", f"{name}.bias", tuple(m.bias.shape), "vector",
                                      classifier=name == classifier))
                covered.add(f"{name}.bias")
        elif isinstance(m, nnx.BatchNorm):
            for attr, tkey in _BN_KEYS:
                v = getattr(m, attr, None)
                if v is not None:
                    entries.append(_Entry(name, attr, f"{name}.{tkey}", tuple(v.shape), "vector"))
                    covered.add(f"{name}.{attr}")
        elif isinstance(m, ZeroPadShortcut):
            covered.add(f"{name}.proj")

    stray = [k for k in flat_arrays(nnx.state(model)) if k not in covered]
    if stray:
        raise UserError(f"{_arch(model)}: no torch counterpart is known for {_fmt(stray)}: "
                        "isotpp.pruning.torch_convert handles conv, dense and BatchNorm layers only")
    return entries


def _sized_by_input(model, layer: str) -> bool:
    """Whether the inputs of dense ``layer`` of a zoo model depend on the input size (its architecture built
    for twice the input's side has another kernel there); only asked to explain a shape mismatch."""
    config, shape = getattr(model, "build_config", None), getattr(model, "input_shape", None)
    if config is None or not shape:
        return False
    bigger = (*(2 * d for d in shape[:2]), *shape[2:]) if len(shape) == 3 else tuple(2 * d for d in shape)
    other = dataclasses.replace(config, input_shape=bigger).create(widths=widths_of(model), abstract=True)
    here = dict(iter_modules(model))[layer].kernel.shape
    return dict(iter_modules(other))[layer].kernel.shape != here


def _to_isotpp(e: _Entry, w: np.ndarray) -> np.ndarray:
    if e.kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return np.transpose(w, (2, 3, 1, 0))
    if e.kind == "dense":  # (out, in) -> (in, out); C,H,W -> H,W,C inputs after a flatten
        return w.T if e.order is None else w.T[e.order]
    return w


def _to_torch(e: _Entry, k: np.ndarray) -> np.ndarray:
    if e.kind == "conv":
        return np.transpose(k, (3, 2, 0, 1))
    if e.kind == "dense":
        if e.order is None:
            return k.T
        rows = np.empty_like(k)
        rows[e.order] = k
        return rows.T
    return k


# --------------------------------------------------------------------------
# State dicts: unwrapping and values
# --------------------------------------------------------------------------


def _normalize(state_dict: Any) -> dict[str, Any]:
    """The flat ``{key: tensor}`` inside a checkpoint, wrappers and prefixes removed."""
    obj = state_dict
    for _ in range(4):  # {"state_dict": {...}}, {"model": {...}}, nested a few deep at most
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise UserError(f"expected a state dict (a mapping such as {{'conv1.weight': tensor, …}}), got "
                        f"{type(state_dict).__name__}: pass model.state_dict() or the checkpoint dict holding it")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UserError(f"state dict key {key!r} is not a string: pass model.state_dict()")
        clean = ".".join(p for p in key.split(".") if p not in _WRAPPER_PARTS)
        if clean in out:
            raise UserError(f"state dict keys {key!r} and another one both mean {clean!r} once the "
                            f"DataParallel 'module.' prefix is removed: keep only one copy of the weights")
        out[clean] = value
    return out


def _as_numpy(key: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except (TypeError, RuntimeError):  # bfloat16 and friends have no numpy dtype
            return t.float().numpy()
    if isinstance(value, jax.Array | np.generic):
        return np.asarray(value)
    raise UserError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor or array: "
                    "pass only the weights (model.state_dict())")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", ()))


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def from_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, Any], *, strict: bool = True,
                          x=None) -> nnx.Module:
    """Fill ``model`` (in place; also returned) from a torch-layout state dict.

    ``state_dict`` maps torch keys to torch tensors or numpy arrays; a
    checkpoint wrapper (``{"state_dict": …}``, ``{"model": …}``) and the
    ``module.`` prefix of DataParallel are removed. ``model`` may be abstract
    (``nnx.eval_shape``): every variable is then filled, option-A channel maps
    with their canonical values.

    With ``strict`` (default) every model variable must be in the state dict
    and every key must be used (``num_batches_tracked`` aside); without it,
    missing variables keep the model's values and unused keys are ignored.
    Shape mismatches are always errors. ``x`` (one example batch, or its
    ``jax.ShapeDtypeStruct``) is needed only for a model without
    ``input_shape``: the flatten order of dense layers comes from its traced
    channel groups.
    """
    arch = _arch(model)
    sd = _normalize(state_dict)
    entries = _plan(model, x)
    fixed = _fixed_maps(model)
    fixed_keys = {f"{n}.proj" for n, _ in fixed}
    wanted = {e.key for e in entries}

    missing = [e.key for e in entries if e.key not in sd]
    unexpected = [k for k in sd if k not in wanted and not k.endswith(_IGNORED_SUFFIX) and k not in fixed_keys]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"the state dict lacks {len(missing)} key(s) {arch} needs ({_fmt(missing)})")
        if unexpected:
            parts.append(f"{'it' if missing else 'the state dict'} has {len(unexpected)} key(s) {arch} "
                         f"does not use ({_fmt(unexpected)})")
        raise UserError(f"{arch}: " + " and ".join(parts) + ": check that the checkpoint is of this architecture "
                        "(depth, shortcut option, classifier), or pass strict=False to skip them")

    modules = dict(_modules(model))
    updates = []
    for e in entries:
        if e.key not in sd:
            continue
        value = _as_numpy(e.key, sd[e.key])
        got = _shape(value)
        if got != e.torch_shape:
            if e.classifier and got[:1] != e.torch_shape[:1]:
                hint = f"build the model with num_classes={got[0]}" if got else "check the checkpoint"
            elif e.kind == "dense" and got[:1] == e.torch_shape[:1] and _sized_by_input(model, e.layer):
                hint = "build the model with the input_shape the checkpoint was trained on"
            else:
                hint = ("a pruned checkpoint needs matching widths: "
                        "create_model(arch, widths=isotpp.pruning.torch_convert.infer_widths(arch, state_dict))")
            raise UserError(f"{arch}: {e.key} has shape {got} in the state dict but the model expects "
                            f"{e.torch_shape}: {hint}")
        updates.append((e, _to_isotpp(e, value)))

    for e, array in updates:
        var = getattr(modules[e.layer], e.attr)
        var.set_value(jnp.asarray(array, dtype=var.dtype))
    for _, m in fixed:
        if _is_abstract(m.proj.get_value()):
            m.init_constants()
    left = [k for k, v in flat_arrays(nnx.state(model)).items() if _is_abstract(v)]
    if left:
        raise UserError(f"{arch}: the model is abstract (nnx.eval_shape) and the state dict does not fill "
                        f"{_fmt(left)}: build it with create_model to keep initial values for missing keys")
    return model


def to_torch_state_dict(model: nnx.Module, *, x=None) -> dict[str, np.ndarray]:
    """The torch-layout state dict of ``model`` as numpy arrays, keys in forward order.

    BatchNorm layers get ``num_batches_tracked`` = 0 (int64) so the keys are
    exactly those of the torch module; option-A channel maps have no torch
    counterpart and are left out. ``torch.from_numpy`` each value (or pass
    the dict to :func:`from_torch_state_dict`). ``x`` as there.
    """
    modules = dict(_modules(model))
    out: dict[str, np.ndarray] = {}
    for e in _plan(model, x):
        value = getattr(modules[e.layer], e.attr).get_value()
        if _is_abstract(value):
            raise UserError(f"{_arch(model)} is abstract (built with nnx.eval_shape) and has no values to export: "
                            "fill it first (from_torch_state_dict or isotpp.pruning.model_file.load_model)")
        out[e.key] = _to_torch(e, np.asarray(value))
        if isinstance(modules[e.layer], nnx.BatchNorm) and e.attr == "var":
            out[f"{e.layer}{_IGNORED_SUFFIX}"] = np.array(0, dtype=np.int64)
    return out


@functools.lru_cache(maxsize=32)
def _layer_names_cached(arch: str, kwargs: tuple) -> tuple[str, ...]:
    return tuple(layer_names(nnx.eval_shape(lambda: create_model(arch, **dict(kwargs)))))


def _layer_names(arch: str, **arch_kwargs: Any) -> list[str]:
    """Conv / dense layer names of ``arch`` (shapes only, nothing allocated; cached)."""
    try:
        key = tuple(sorted(arch_kwargs.items()))
        hash(key)
    except TypeError:  # unhashable arch_kwargs: no cache

        return layer_names(nnx.eval_shape(lambda: create_model(arch, **arch_kwargs)))
    return list(_layer_names_cached(arch, key))


def infer_widths(arch: str, state_dict: Mapping[str, Any], **arch_kwargs: Any) -> dict[str, int]:
    """The widths record of the (possibly pruned) network in a torch state dict.

    Output channels of every conv / dense layer of ``arch`` but the classifier
    (whose size is ``num_classes``), read from the ``.weight`` shapes, so
    ``create_model(arch, widths=infer_widths(arch, sd), num_classes=…)``
    rebuilds a model that ``from_torch_state_dict`` can fill. ``arch_kwargs``
    as for ``create_model`` (e.g. ``depth`` of ``mlp``).
    """
    sd = _normalize(state_dict)
    names = _layer_names(arch, **arch_kwargs)
    missing = [f"{n}.weight" for n in names if f"{n}.weight" not in sd]
    if missing:
        raise UserError(f"{arch}: the state dict has no {_fmt(missing)}: it is not a {arch} checkpoint "
                        "(check the architecture name, depth and shortcut option)")
    widths = {}
    for name in names[:-1]:
        shape = _shape(sd[f"{name}.weight"])
        if len(shape) < 2:
            raise UserError(f"{arch}: {name}.weight has shape {shape}, not a conv or dense weight: "
                            "check the architecture name")
        widths[name] = shape[0]
    return widths


def _num_classes(arch: str, sd: Mapping[str, Any], **arch_kwargs: Any) -> int:
    classifier = _layer_names(arch, **arch_kwargs)[-1]
    shape = _shape(sd.get(f"{classifier}.weight"))
    if len(shape) != 2:
        raise UserError(f"{arch}: the state dict has no dense {classifier}.weight (got shape {shape or None}): "
                        "check the architecture name")
    return shape[0]


def _import_torch():
    try:
        # optional dependency: pip install isotpp[torch]
        import torch
    except ImportError:
        raise UserError("reading PyTorch .pth checkpoints needs PyTorch: pip install isotpp[torch] "
                        "(or convert the state dict to numpy arrays elsewhere)") from None
    return torch


def _read_pth(path: str | Path) -> Any:
    torch = _import_torch()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise UserError(
                f"checkpoint {path} holds pickled Python objects besides tensors ({found.group(1)}), which are "
                "not loaded for safety: re-save only the weights where it was written, e.g. "
                "torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pth')") from None
        error = e
    except Exception as e:  # noqa: BLE001 - torch raises anything from EOFError to IndexError for a broken file
        error = e
    first = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
    raise UserError(f"checkpoint {path} is not a readable PyTorch file ({first}): it may be truncated "
                    "or of another format; re-download or re-save it")


def load_torch_checkpoint(path: str | Path, arch: str, num_classes: int | None = None, *,
                          input_shape: tuple[int, ...] | None = None, strict: bool = True,
                          **arch_kwargs: Any) -> nnx.Module:
    """An isotpp ``arch`` model holding the weights of the torch checkpoint ``path``.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``;
    widths (pruned checkpoints) and, unless given, ``num_classes`` come from
    the tensor shapes. ``input_shape`` as for ``create_model`` (LeNet-5 and
    MLPs trained on other input sizes). The model carries a ``build_config``,
    so :func:`isotpp.pruning.model_file.save_model` can store it.
    """

    sd = _normalize(_read_pth(path))
    widths = infer_widths(arch, sd, **arch_kwargs)
    if num_classes is None:
        num_classes = _num_classes(arch, sd, **arch_kwargs)
    config = BuildConfig(arch, num_classes, tuple(input_shape) if input_shape is not None else None,
                         tuple(sorted(arch_kwargs.items())))
    # strict: every variable gets filled, so skip Flax's random initialisation
    model = config.create(widths=widths, abstract=strict)
    return from_torch_state_dict(model, sd, strict=strict)


def convert_file(src: str | Path, arch: str, dst: str | Path, *, num_classes: int | None = None,
                 input_shape: tuple[int, ...] | None = None, **arch_kwargs: Any) -> Path:
    """Convert the torch checkpoint ``src`` of architecture ``arch`` into the
    isotpp model file ``dst`` (``.npz``, read back by
    :func:`isotpp.pruning.model_file.load_model`); returns ``dst``."""

    model = load_torch_checkpoint(src, arch, num_classes, input_shape=input_shape, **arch_kwargs)
    return save_model(dst, model, meta={"converted_from": str(src)})
