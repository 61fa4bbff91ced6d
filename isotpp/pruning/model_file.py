"""Model files: the weights of one network plus what rebuilds its architecture.

A model file is an artefact of kind ``isotpp.model``
(:mod:`isotpp.storage.artifact`: a ``.npz`` archive plus one JSON header)
holding every variable of the NNX state under its dotted path
(``layer1.0.conv1.kernel``, ``bn1.mean``); its header carries the build config (architecture, classes, input
shape, arch kwargs), the widths record of a pruned network and free-form
metadata. Any other NNX module is saved with what rebuilds it: the import
path of its constructor (when it has one), the per-sample input shape and the
width of every channel group (:func:`isotpp.pruning.groups.channel_groups`); loading
builds the module at its original widths and prunes each group to the stored
width before filling in the arrays. It is written atomically, so an interrupted save never replaces a
good file with a broken one. (Training checkpoints with optimiser and method
state are a separate, orbax-based format.)
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import BuildConfig, widths_of
from isotpp.models.program import example_input
from isotpp.pruning.groups import channel_groups
from isotpp.pruning.plan import Plan, hard_prune
from isotpp.storage.artifact import MODEL, Artifact, read_artifact, write_artifact


def _flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        out[".".join(str(p) for p in path)] = np.asarray(var[...])
    return out


def _import_path(constructor: Callable[[], nnx.Module]) -> dict[str, Any] | None:
    """``{"call": "module:qualname", "kwargs": {...}}`` for an importable zero-argument constructor, else None."""
    kwargs: dict[str, Any] = {}
    fn = constructor
    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        kwargs, fn = dict(fn.keywords), fn.func
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        json.dumps(kwargs)
    except TypeError:
        return None
    return {"call": f"{module}:{qualname}", "kwargs": kwargs}


def _custom_header(model: nnx.Module, constructor, x) -> dict[str, Any]:
    spec = example_input(model, x)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "constructor": _import_path(constructor) if constructor is not None else None,
        "input_shape": list(spec.shape[1:]),
        "input_dtype": str(spec.dtype),
        "group_widths": {g.name: g.size for g in channel_groups(model, spec)},
    }


def save_model(path: str | Path, model: nnx.Module, meta: dict[str, Any] | None = None, *,
               constructor: Callable[[], nnx.Module] | None = None, x=None) -> Path:
    """Write ``model`` (weights, BN statistics, architecture) to ``path`` (.npz).

    For a module not built by :func:`isotpp.models.create_model`, pass the
    zero-argument ``constructor`` that builds it unpruned (a function or
    ``functools.partial`` in an importable module is recorded, so
    :func:`load_model` and ``isotpp spectrum --checkpoint`` rebuild it alone)
    and, unless it has ``input_shape``, an example input ``x``.
    """
    config = getattr(model, "build_config", None)
    if config is not None:
        fields = {"build": config.to_dict(), "widths": widths_of(model)}
    else:
        fields = {"custom": _custom_header(model, constructor, x)}
    return write_artifact(path, MODEL, _flat_state(model), fields, meta)


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of model file ``path`` (checked; no weights are read)."""
    return read_artifact(path, MODEL, _header)


def _header(file: Artifact) -> dict[str, Any]:
    header = file.header
    build, widths = header.get("build"), header.get("widths")
    if not isinstance(build, dict) and not isinstance(header.get("custom"), dict):
        raise file.corrupt(f"has no build description (got {type(build).__name__})")
    if widths is not None and not (isinstance(widths, dict) and all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in widths.items())):
        raise file.corrupt("has a corrupt widths record")
    # Every size the header declares (classes, depth, width, input size, a layer's width) counts numbers the
    # file must hold; checked before the architecture is built, so a crafted header cannot make that slow.
    held = file.held()
    build = build if isinstance(build, dict) else {}  # a module from outside the zoo: its sizes are in "custom"
    arch_kwargs = build.get("arch_kwargs") if isinstance(build.get("arch_kwargs"), dict) else {}
    sizes = {"num_classes": build.get("num_classes"), **arch_kwargs, **(widths or {})}
    for name, value in sizes.items():
        if type(value) is int and value > held:
            raise file.corrupt(f"declares {name} = {value:,}, more than the {held:,} numbers it holds "
                               "(it is corrupt or crafted)")
    return header


def load_model(path: str | Path, constructor: Callable[[], nnx.Module] | None = None) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuild the network stored in ``path``; returns (model, header).

    A module saved from outside the zoo is rebuilt with ``constructor`` (or
    the one recorded in the file) and pruned to the stored group widths.
    """
    return read_artifact(path, MODEL, functools.partial(_load, constructor=constructor))


def _load(file: Artifact, constructor) -> tuple[nnx.Module, dict[str, Any]]:
    header = _header(file)
    if "custom" in header:
        model, name = _rebuild_custom(file.path, header["custom"], constructor)
        info = {"arch": name, "input_shape": header["custom"].get("input_shape"),
                "widths": header["custom"].get("group_widths"), "meta": file.meta}
    else:
        config = BuildConfig.from_dict(header.get("build", {}))
        model = config.create(widths=header.get("widths") or None, abstract=True)
        name = config.name
        info = {**header["build"], "widths": header.get("widths"), "meta": file.meta}
    _fill(file, model, name)
    return model, info


def _fill(file: Artifact, model: nnx.Module, name: str) -> None:
    flat = []
    for key_path, var in nnx.to_flat_state(nnx.state(model)):
        key = ".".join(str(p) for p in key_path)
        if key not in file.names:
            raise file.corrupt(f"lacks {key} for {name}", "it was saved from another architecture or is incomplete; "
                               "save it again with isotpp.save_model")
        array = file.array(key, tuple(var.shape))  # the shape is checked before the array is read
        flat.append((key_path, var.replace(jax.numpy.asarray(array, dtype=var.dtype))))
    nnx.update(model, nnx.from_flat_state(flat))


def _rebuild_custom(path, custom: dict[str, Any], constructor) -> tuple[nnx.Module, str]:
    name = str(custom.get("class", "model")).rpartition(".")[2]
    if constructor is None:
        recorded = custom.get("constructor")
        if not recorded:
            raise UserError(f"{path} holds a {name} defined in __main__ or a notebook: load it in Python with "
                            "load_model(path, constructor=...), or save it with a constructor from an importable module")
        module, _, qualname = recorded["call"].partition(":")
        try:
            fn: Any = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
        except (ImportError, AttributeError) as e:
            raise UserError(f"{path} was saved with constructor {recorded['call']}, which cannot be imported ({e}): "
                            "install its package or pass constructor=") from None
        constructor = functools.partial(fn, **recorded.get("kwargs", {}))
    model = constructor()
    if not isinstance(model, nnx.Module):
        raise UserError(f"the constructor returned {type(model).__name__}, not an NNX module")
    shape = custom.get("input_shape")
    x = jax.ShapeDtypeStruct((2, *shape), custom.get("input_dtype", "float32")) if shape is not None else None
    widths = custom.get("group_widths") or {}
    groups = {g.name: g for g in channel_groups(model, x)}
    unknown = [k for k in widths if k not in groups]
    if unknown:
        raise UserError(f"{path} has channel group {unknown[0]!r}, which the constructor's {name} lacks: "
                        "it was saved from another architecture")
    sizes, pruned = {}, {}
    for k, w in widths.items():
        g = groups[k]
        if w > g.size:
            raise UserError(f"{path} gives group {k} {w} channels, the constructor's {name} has only {g.size}")
        if w < g.size:
            sizes[k], pruned[k] = g.size, tuple(range(w, g.size))
    if pruned:
        model = hard_prune(model, Plan(sizes, pruned), list(groups.values()), x=x)
    if shape is not None and getattr(model, "input_shape", None) is None:
        model.input_shape = tuple(shape)
    return model, name
