"""``isotpp spectrum``: a model's per-sample Jacobian spectrum, summarised."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from isotpp.errors import UserError


def build_inputs(spec_shape: tuple[int, ...], samples: int, seed: int, data: str | None, data_dir: str | None):
    """Inputs for the spectrum: the first test examples of a dataset, or N(0, 1) noise."""
    if data is None or data in ("random", "gaussian"):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((samples, *spec_shape)).astype(np.float32), "gaussian"
    from isotpp.data import load_dataset

    ds = load_dataset(data, "test", data_dir=data_dir, limit=samples)
    x = ds.images
    if len(x) < samples:
        raise UserError(f"{data} has only {len(x)} test examples, fewer than --samples {samples}: lower --samples")
    if tuple(x.shape[1:]) != tuple(spec_shape) and int(np.prod(x.shape[1:])) != int(np.prod(spec_shape)):
        raise UserError(
            f"{data} images have shape {tuple(x.shape[1:])} but the model expects {tuple(spec_shape)}: "
            "choose a dataset that fits the model"
        )
    return x.reshape((len(x), *spec_shape)), data


def _check_memory(model: str, num_classes: int | None, arch_kwargs: dict[str, Any], samples: int,
                  chunk_size: int | None, itemsize: int) -> None:
    """Refuse, before allocating, a model or an input set that cannot fit in memory (one line)."""
    import math

    from flax import nnx

    from isotpp.memory import parameter_count, require
    from isotpp.models import create_model

    abstract = nnx.eval_shape(lambda: create_model(model, num_classes=num_classes, **arch_kwargs))
    params = parameter_count(abstract)
    inputs, outputs = math.prod(abstract.input_shape), int(abstract.num_classes)
    chunk = min(samples, chunk_size or 64)
    need = itemsize * (3 * params + samples * (inputs + min(inputs, outputs)) + chunk * inputs * outputs)
    size = f"{params:,} parameters; {samples:,} samples of {inputs:,} inputs; {outputs:,} outputs"
    require(need, f"the spectrum of {model} ({size})", "lower --width, --num-classes, --input-dim or --jsv-samples")


def run_spectrum(
    *,
    model: str = "mlp",
    depth: int = 7,
    width: int = 100,
    act: str = "linear",
    input_dim: int | None = None,
    num_classes: int | None = None,
    init: str = "default",
    sigma_w: float = 1.0,
    samples: int = 100,
    seed: int = 0,
    method: str = "auto",
    bn: str = "eval",
    float64: bool = False,
    checkpoint: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    chunk_size: int | None = None,
    values: bool = False,
    json_path: str | None = None,
    plot_path: str | None = None,
    plot_formats: tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Compute, summarise and (optionally) write a model's JSV. Returns the result dict.

    The dict holds the summary keys (mean, std, max, min, cond_mean, diff_mean,
    n_samples), the model/init used, the method, timing, the theory's
    prediction where one applies, and ``table`` (a printable summary).
    ``plot_formats`` (e.g. ``("png", "pdf")``) writes the histogram once per
    format, ``plot_path`` with each extension; by default its own extension
    decides.
    """
    import jax

    from isotpp.plots import figure_format

    if plot_path and not plot_formats:
        figure_format(plot_path)  # a bad extension fails before the work

    if float64:
        jax.config.update("jax_enable_x64", True)
    from isotpp import spectrum as sp
    from isotpp import theory
    from isotpp.models import create_model
    from isotpp.report import fmt_number, markdown_table

    arch_kwargs: dict[str, Any] = {}
    if checkpoint is not None:
        from isotpp.checkpoint import load_model

        net, meta = load_model(checkpoint)
        model_name = meta["arch"]
        init_used = f"checkpoint:{Path(checkpoint).name}"
    else:
        model_name = model
        if model == "mlp":
            arch_kwargs = {"depth": depth, "width": width, "act": act, "input_dim": input_dim or 1024}
        _check_memory(model_name, num_classes, arch_kwargs, samples, chunk_size, 8 if float64 else 4)
        net = create_model(model_name, num_classes=num_classes, init=init, sigma_w=sigma_w, seed=seed, **arch_kwargs)
        init_used = init
    input_shape = tuple(net.input_shape)
    if checkpoint is not None:  # the model is bounded by its file; the inputs by --jsv-samples
        from isotpp.memory import require

        require(samples * int(np.prod(input_shape)) * (8 if float64 else 4), f"{samples:,} input samples",
                "lower --jsv-samples")
    if float64:
        net = sp.to_float64(net)

    resolved = method
    if method == "auto":
        resolved = "linear" if sp.is_input_linear(net) else "gram"
    x, source = build_inputs(input_shape, samples, seed + 1, data, data_dir)
    if float64:
        x = x.astype(np.float64)

    bar = None
    if progress and resolved != "linear" and samples > 1:
        from isotpp.progress import progress as progress_bar

        bar = progress_bar(samples, "spectrum", unit="sample")

    def on_chunk(done, total):
        if bar is not None:
            bar.n = done
            bar.refresh()

    t0 = time.perf_counter()
    sv = sp.model_singular_values(net, x, method=resolved, bn=bn, chunk_size=chunk_size, progress=on_chunk)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if not np.all(np.isfinite(sv)):
        raise UserError("the spectrum contains NaN/inf (diverged or corrupt weights): check the checkpoint or lower sigma_w")

    summary = sp.summarize(sv)
    result: dict[str, Any] = summary.as_dict()
    lam = np.asarray(sv, dtype=np.float64) ** 2
    result["lambda_mean"] = float(lam.mean())
    result["lambda_var_over_mean_sq"] = float(lam.var() / lam.mean() ** 2) if lam.mean() > 0 else float("nan")
    result.update(
        model=model_name,
        init=init_used,
        sigma_w=sigma_w,
        method=resolved,
        bn=bn,
        dtype="float64" if float64 else "float32",
        inputs=source,
        seed=seed,
        seconds=elapsed,
        **{k: v for k, v in arch_kwargs.items()},
    )
    if checkpoint is None and model_name == "mlp":
        result["num_classes"] = num_classes or 10
    th = None
    if checkpoint is None and model_name == "mlp":
        square = (input_dim or 1024) == width == (num_classes or 10)
        if square:
            th = theory.theory_for(init, depth, sigma_w, act)
    if th is not None:
        result["theory"] = th.summary()

    keys = ("mean", "std", "max", "min", "cond_mean", "diff_mean", "lambda_mean", "lambda_var_over_mean_sq")
    rows = [[k, fmt_number(result[k])] for k in keys]
    rows.append(["n_samples", str(summary.n_samples)])
    if th is not None:
        for k, v in th.summary().items():
            if isinstance(v, (int, float)):
                rows.append([f"theory: {k}", fmt_number(float(v))])
    header = f"{model_name} · init {init_used} · method {resolved} · {result['dtype']} · {elapsed:.2f} s"
    result["table"] = header + "\n" + markdown_table(["statistic", "value"], rows)

    out = {k: v for k, v in result.items() if k != "table"}
    if values:
        out["singular_values"] = sv.tolist()
    if json_path:
        from isotpp.io import write_json

        result["json"] = str(write_json(json_path, out))
    if plot_path:
        from isotpp.plots import save_figures, spectrum_histogram

        try:  # like --json: a missing directory is created
            Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create directory {Path(plot_path).parent}: {e.strerror}; choose a writable path"
                            ) from None

        n = summary.n_samples
        inputs = "Gaussian inputs" if source == "gaussian" else f"{source} test images"
        title = (f"JSV of {model_name} (init {init_used}), "
                 + ("input-free (linear)" if resolved == "linear" else f"{n} sample{'s' if n != 1 else ''}, {inputs}"))
        fig = spectrum_histogram(sv.ravel(), theory=th, title=title)
        result["plot"] = ", ".join(str(p) for p in save_figures(fig, plot_path, plot_formats))
    return result
