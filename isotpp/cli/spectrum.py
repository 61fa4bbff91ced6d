"""``isotpp spectrum``: a model's per-sample Jacobian spectrum, summarised."""

from __future__ import annotations

import contextlib
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
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
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
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
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


# from this depth on an MLP's spectrum spans more decades than float32 resolves
FLOAT64_DEPTH = 16


def fixed_point_inputs(n: int, dim: int, norm_sq_per_dim: float, seed: int) -> np.ndarray:
    """``n`` Gaussian directions scaled to |x|^2 = dim * norm_sq_per_dim exactly."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x *= np.sqrt(dim * norm_sq_per_dim) / np.linalg.norm(x, axis=1, keepdims=True)
    return x


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
    sigma_b: float = 0.0,
    samples: int = 100,
    nets: int = 1,
    seed: int = 0,
    method: str = "auto",
    bn: str = "eval",
    float64: bool = False,
    checkpoint: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    chunk_size: int | None = None,
    matvecs: int | None = None,
    memory_budget: int | None = None,
    values: bool = False,
    json_path: str | None = None,
    plot_path: str | None = None,
    plot_formats: tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Compute, summarise and (optionally) write a model's JSV. Returns the result dict.

    The dict holds the summary keys (mean, std, max, min, cond_mean, diff_mean,
    n_samples), the model/init used, the method, timing, the theory's
    prediction where one applies (``theory``; else ``theory_note`` says why not),
    and ``table`` (a printable summary). ``nets`` independent weight draws
    (seeds ``seed``, ``seed + 1``, ...) are pooled; a network whose Jacobian does
    not depend on its input (a linear MLP) contributes one spectrum, not one per
    sample. MLPs of depth >= 16 are computed in float64 whatever ``float64`` says.
    For a nonlinear MLP without ``data`` the inputs sit at the mean-field fixed
    point: |x|^2 / N_0 = E[phi(h)^2], h ~ N(0, q*). ``plot_formats`` (e.g.
    ``("png", "pdf")``) writes the figure once per format, ``plot_path`` with
    each extension; by default its own extension decides. ``method="stochastic"`` (or ``"auto"`` with at
    least 4 × ``matvecs`` classes) estimates the spectrum from ``matvecs`` J·Jᵀ products per sample; ``mean``
    and ``lambda_mean`` are then the estimator's, and ``error`` says how far off they may be (for the exact
    methods: their resolution). ``memory_budget`` (bytes) fits the chunk of samples to it.
    """
    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    import jax

    from isotpp.reporting.figures import figure_format

    if plot_path and not plot_formats:
        figure_format(plot_path)  # a bad extension fails before the work

    # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
    from isotpp import theory
    from isotpp.models import create_model
    from isotpp.reporting.tables import fmt_number, markdown_table
    from isotpp.spectra import jacobian as sp

    if isinstance(nets, bool) or not isinstance(nets, int) or nets < 1:
        raise UserError(f"nets must be an integer >= 1, got {nets!r}")
    if checkpoint is not None and nets > 1:
        raise UserError("nets > 1 draws new weights, a checkpoint has one set: use nets=1 with a checkpoint")
    if sigma_b and (checkpoint is not None or model != "mlp"):
        raise UserError("sigma_b draws the biases of a freshly initialised mlp: use it with model='mlp' only")
    is_mlp = checkpoint is None and model == "mlp"

    arch_kwargs: dict[str, Any] = {}
    if is_mlp:
        arch_kwargs = {"depth": depth, "width": width, "act": act, "input_dim": input_dim or 1024}

    def build(k: int):
        if checkpoint is not None:
            # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
            from isotpp.pruning.model_file import load_model

            net, meta = load_model(checkpoint)
            return net, meta["arch"], f"checkpoint:{Path(checkpoint).name}"
        net = create_model(model, num_classes=num_classes, init=init, sigma_w=sigma_w, seed=seed + k, **arch_kwargs)
        if sigma_b:
            # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
            from isotpp.models.mlp import draw_biases

            draw_biases(net, sigma_b, seed + k)
        return net, model, init

    if checkpoint is None:
        _check_memory(model, num_classes, arch_kwargs, samples * nets, chunk_size, 8 if float64 else 4)
    net, model_name, init_used = build(0)
    input_shape = tuple(net.input_shape)
    if checkpoint is not None:  # the model is bounded by its file; the inputs by --jsv-samples
        from isotpp.memory import require

        require(samples * int(np.prod(input_shape)) * (8 if float64 else 4), f"{samples:,} input samples",
                "lower --jsv-samples")
    input_linear = sp.is_input_linear(net)
    n_in = int(np.prod(input_shape))
    n_out = int(getattr(net, "num_classes", 0) or (num_classes or 10))
    resolved = method
    if method == "auto":
        resolved = "linear" if input_linear else "gram"
    # float32 cannot resolve the small singular values of deep products; a linear
    # MLP's exact kernel product costs nothing in float64
    float64_auto = is_mlp and not float64 and (depth >= FLOAT64_DEPTH or resolved == "linear")
    float64 = float64 or float64_auto

    # theory first: it fixes the inputs of a nonlinear MLP (the mean-field fixed point)
    th, note, q_in = None, None, None
    widths = None
    if is_mlp:
        widths = (n_in, *([width] * (depth - 1)), n_out)
        if not input_linear and data is None:
            wl = theory.weight_law(init, sigma_w)
            if wl is not None:
                q_in = theory.fixed_point_input_norm_sq(act, wl[1], sigma_b)
        th, note = theory.network_theory(init, act, widths, sigma_w, sigma_b, q_in, dataset_inputs=data is not None)
    elif checkpoint is not None:
        note = "no theory for a checkpoint: its weights are not a random draw"
    else:
        note = f"no theory for {model_name}: the free-probability theory covers fully connected networks (mlp)"

    # many classes: the stochastic estimate, unless a theory's density is compared (that needs the exact one)
    if (method == "auto" and resolved == "gram" and th is None and bn == "eval"
            and sp.stochastic.prefer_stochastic(n_out, n_in, matvecs)):
        resolved = "stochastic"

    def inputs(k: int):
        if input_linear:
            return None if resolved == "linear" else np.zeros((1, *input_shape), np.float32), "none (J does not depend on x)"
        if q_in is not None:
            x = fixed_point_inputs(samples, n_in, q_in, seed + 1 + k).reshape((samples, *input_shape))
            return x.astype(np.float32), f"gaussian at the mean-field fixed point (|x|^2/N = {q_in:.6g})"
        return build_inputs(input_shape, samples, seed + 1 + k, data, data_dir)

    bar = None
    total = nets * (1 if input_linear else samples)
    if progress and resolved != "linear" and total > 1:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.progress import progress as progress_bar

        bar = progress_bar(total, "spectrum", unit="sample")

    rows, estimates, source, elapsed = [], [], None, 0.0
    # x64 only for this computation (a context, so a library caller's session keeps its own setting)
    with jax.enable_x64(True) if float64 else contextlib.nullcontext():
        for k in range(nets):
            if k:
                net = build(k)[0]
            if float64:
                net = sp.to_float64(net)
            x, source = inputs(k)
            if x is not None and float64:
                x = x.astype(np.float64)
            done_before = k * (total // nets)

            def on_chunk(done, _total, _base=done_before):
                if bar is not None:
                    bar.n = _base + done
                    bar.refresh()

            t0 = time.perf_counter()
            est = sp.spectrum_estimate(net, x, method=resolved, bn=bn, chunk_size=chunk_size, progress=on_chunk,
                                       matvecs=matvecs, memory_budget=memory_budget)
            elapsed += time.perf_counter() - t0
            rows.append(np.asarray(est.values, dtype=np.float64))
            estimates.append(est)
    if bar is not None:
        bar.close()
    sv = np.concatenate(rows, axis=0)
    if not np.all(np.isfinite(sv)):
        raise UserError("the spectrum contains NaN/inf (diverged or corrupt weights): check the checkpoint or lower sigma_w")

    summary = sp.summarize(sv)
    result: dict[str, Any] = summary.as_dict()
    lam = sv**2
    result["lambda_mean"] = float(lam.mean())
    pooled = sp.pooled_estimate(estimates)
    result["error"] = sp.error_report(pooled)
    if pooled.stochastic is not None:  # the estimator's means, which its error describes
        result["mean"], result["lambda_mean"] = pooled.stochastic.sv_mean()[0], pooled.stochastic.lambda_mean()[0]
    result["lambda_var_over_mean_sq"] = float(lam.var() / lam.mean() ** 2) if lam.mean() > 0 else float("nan")
    result.update(
        model=model_name,
        init=init_used,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
        nets=nets,
        samples_per_net=sv.shape[0] // nets,
        method=resolved,
        bn=bn,
        dtype="float64" if float64 else "float32",
        float64_auto=float64_auto,
        inputs=source,
        seed=seed,
        seconds=elapsed,
        **{k: v for k, v in arch_kwargs.items()},
    )
    if is_mlp:
        result["num_classes"] = n_out
    # the smallest s the computation resolves, relative to s_max: an SVD of J ~ a few eps (float64 1e-13,
    # float32 1e-6), the Gram matrix J Jᵀ squares the condition number: ~sqrt(eps) (float64 3e-8, float32 3e-4)
    if resolved in ("linear", "jacobian"):
        rel_floor = 1e-13 if float64 or resolved == "linear" else sp.JACOBIAN_RESOLUTION
    else:
        rel_floor = 3e-8 if float64 else sp.GRAM_RESOLUTION
    if th is not None:
        result["theory"] = th.as_json()
        # values below the floor are rounding: the KS distance lumps [0, floor] into one point
        result["ks_distance"] = theory.ks_distance(lam, th.law, floor=(rel_floor * float(sv.max())) ** 2)
        result["ks_floor_s"] = rel_floor * float(sv.max())
    else:
        result["theory_note"] = note

    keys = ("mean", "std", "max", "min", "cond_mean", "diff_mean")
    rows_t = [[k, fmt_number(result[k]), ""] for k in keys]
    pred = result.get("theory", {})
    for k, tk in (("mean", "mean_s"), ("max", "max_s")):
        if tk in pred:
            rows_t[keys.index(k)][2] = fmt_number(pred[tk])
    rows_t.append(["lambda_mean", fmt_number(result["lambda_mean"]), fmt_number(pred.get("lambda_mean"))])
    rows_t.append(["lambda_var_over_mean_sq", fmt_number(result["lambda_var_over_mean_sq"]),
                   fmt_number(pred.get("lambda_var_over_mean_sq"))])
    rows_t.append(["zero fraction", fmt_number(float(np.mean(sv <= 1e-6 * sv.max()))), fmt_number(pred.get("zero_fraction"))])
    if th is not None:
        for k in ("q_star", "chi", "xi_q", "xi_c"):
            if pred.get(k) is not None:
                rows_t.append([k, "", fmt_number(pred[k])])
        rows_t.append(["KS distance (lambda)", fmt_number(result["ks_distance"]), ""])
    rows_t.append(["n_samples", str(summary.n_samples), ""])
    auto_why = "depth >= 16" if depth >= FLOAT64_DEPTH else "exact kernel product"
    header = (f"{model_name} · init {init_used} · method {resolved} · {result['dtype']}"
              f"{f' (automatic: {auto_why})' if float64_auto else ''} · {nets} net(s) · {elapsed:.2f} s")
    table = markdown_table(["statistic", "measured", "theory" if th is not None else ""], rows_t)
    result["table"] = header + "\n" + table + (f"\n{note}" if note else "")

    out = {k: v for k, v in result.items() if k != "table"}
    if values:
        out["singular_values"] = sv.tolist()
    if json_path:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.storage.atomic import write_json

        result["json"] = str(write_json(json_path, out))
    if plot_path:
        # imported on use: the parsers load no JAX, so `isotpp --help` stays fast
        from isotpp.reporting.figures import save_figures
        from isotpp.theory.plots import spectrum_theory_figure

        try:  # like --json: a missing directory is created
            Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create directory {Path(plot_path).parent}: {e.strerror}; choose a writable path"
                            ) from None

        n = summary.n_samples
        where = "input-free (linear)" if resolved == "linear" else f"{n} sample{'s' if n != 1 else ''}, {source}"
        title = f"JSV of {model_name} (init {init_used}), {where}" + (f", {nets} nets" if nets > 1 else "")
        # marked where values lie below it (rounding there, not data)
        floor = rel_floor * float(sv.max())
        fig = spectrum_theory_figure(sv, None, th.law if th is not None else None, title=title,
                                     floor=floor if sv.min() < floor else None, precision=result["dtype"])
        result["plot"] = ", ".join(str(p) for p in save_figures(fig, plot_path, plot_formats))
    return result
