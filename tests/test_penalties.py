"""Kernel penalties (REFERENCE §3–§4): values and gradients against hand
computations and independent numpy routes, in dense, 1×1 and 3×3 layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp import penalties as pen

# Kernels in Flax layout, filters last: dense (fan_in, n), conv (kh, kw, c_in, n).
SHAPES = [(3, 4), (1, 1, 3, 4), (3, 3, 2, 4)]


def _kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _rows(kernel):
    """W (n, fan_in) in float64, one row per output channel, built filter by filter."""
    k = np.asarray(kernel, dtype=np.float64)
    return np.stack([k[..., i].ravel() for i in range(k.shape[-1])])


def _to_kernel_layout(w_grad, shape):
    """Inverse of :func:`_rows`: row i of an (n, fan_in) array back to kernel[..., i]."""
    out = np.zeros(shape)
    for i in range(shape[-1]):
        out[..., i] = w_grad[i].reshape(shape[:-1])
    return out


# --------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_filters_is_one_row_per_output_channel(shape):
    k = _kernel(shape)
    w = np.asarray(pen.filters(jnp.asarray(k)))
    assert w.shape == (shape[-1], int(np.prod(shape[:-1])))
    np.testing.assert_array_equal(w, _rows(k).astype(np.float32))


# --------------------------------------------------------------------------
# TPP Gram penalty
# --------------------------------------------------------------------------


def _tpp_numpy(kernel, pruned):
    w = _rows(kernel)
    g = w @ w.T
    keep = 1.0 - np.asarray(pruned, dtype=np.float64)
    t = g * keep[:, None] * keep[None, :]
    return np.mean((g - t) ** 2), g, t, w


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pruned", [[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
def test_tpp_gram_penalty_value_and_closed_form_gradient(shape, pruned):
    k = _kernel(shape, seed=len(shape) + sum(pruned))
    p = jnp.asarray(pruned, jnp.float32)
    value, grad = jax.value_and_grad(pen.tpp_gram_penalty)(jnp.asarray(k), p)

    expected, g, t, w = _tpp_numpy(k, pruned)
    n = len(pruned)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5, atol=1e-7)
    # T is a constant: dL/dG = 2(G − T)/n²; G = W Wᵀ is symmetric, so
    # dL/dW = (dL/dG + dL/dGᵀ) W = 4 (G − T) W / n².
    dw = 4.0 / n**2 * (g - t) @ w
    expected_grad = _to_kernel_layout(dw, shape)
    assert grad.shape == k.shape and grad.dtype == jnp.float32
    atol = 1e-6 * np.abs(expected_grad).max() + 1e-7
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-5, atol=atol)


def test_tpp_gram_penalty_by_explicit_sum_over_pruned_entries():
    """Only the entries (i, j) with i or j pruned count; divided by all n² entries."""
    k = _kernel((3, 3, 2, 5), seed=3)
    pruned = [0, 1, 0, 0, 1]
    w = _rows(k)
    n = len(pruned)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if pruned[i] or pruned[j]:
                total += float(w[i] @ w[j]) ** 2
    got = float(pen.tpp_gram_penalty(jnp.asarray(k), jnp.asarray(pruned)))
    np.testing.assert_allclose(got, total / n**2, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_tpp_gram_penalty_is_zero_with_zero_gradient_when_nothing_is_pruned(shape):
    k = jnp.asarray(_kernel(shape, seed=7))
    value, grad = jax.value_and_grad(pen.tpp_gram_penalty)(k, jnp.zeros(shape[-1]))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_tpp_gram_penalty_ignores_kept_kept_correlations():
    """Moving the kept filters within the orthogonal complement of the pruned
    filter changes only kept–kept Gram entries: the loss must not change."""
    fan_in, n = 6, 4
    k = _kernel((fan_in, n), seed=11).astype(np.float64)
    pruned = jnp.asarray([0, 0, 1, 0], jnp.float32)
    wp = k[:, 2]
    v = np.random.default_rng(12).normal(size=fan_in)
    v -= (v @ wp) / (wp @ wp) * wp  # v ⟂ pruned filter
    moved = k.copy()
    moved[:, [0, 1, 3]] += 3.0 * v[:, None]
    a = float(pen.tpp_gram_penalty(jnp.asarray(k, jnp.float32), pruned))
    b = float(pen.tpp_gram_penalty(jnp.asarray(moved, jnp.float32), pruned))
    assert a > 0
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_tpp_gram_gradient_on_kept_filters_orthogonal_to_pruned_ones_is_zero():
    """Kept filters already orthogonal to the pruned one feel no pull; the pruned
    filter's own gradient is 4‖w_p‖² w_p / n² (its diagonal entry only)."""
    # dense kernel (fan_in 4, n 3): filters are columns
    k = np.array([[1.0, 0.0, 0.0],
                  [2.0, 0.0, 0.0],
                  [0.0, 1.0, 3.0],
                  [0.0, -1.0, 0.5]], np.float32)  # fmt: skip
    pruned = jnp.asarray([1, 0, 0], jnp.float32)
    value, grad = jax.value_and_grad(pen.tpp_gram_penalty)(jnp.asarray(k), pruned)
    # G_00 = 5, G_01 = G_02 = 0 → loss = 25 / 9
    np.testing.assert_allclose(float(value), 25.0 / 9.0, rtol=1e-6)
    grad = np.asarray(grad)
    np.testing.assert_array_equal(grad[:, 1:], 0.0)
    np.testing.assert_allclose(grad[:, 0], 4.0 * 5.0 * k[:, 0] / 9.0, rtol=1e-6)


# --------------------------------------------------------------------------
# KernOrth
# --------------------------------------------------------------------------


def test_kernorth_wide_filter_matrix_is_transposed_by_hand():
    # W (2 filters × 3 fan-in) = [[1,1,0],[0,1,0]]: fewer rows than columns → A = Wᵀ (3×2),
    # A Aᵀ = [[1,1,0],[1,2,0],[0,0,0]], minus I → squares 1+1+1+1 = 4 over 9 entries.
    # (Without the transpose: W Wᵀ − I = [[1,1],[1,0]] → 3/4.)
    w = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    dense = jnp.asarray(w.T)  # (fan_in 3, n 2)
    conv = jnp.asarray(w.T.reshape(1, 1, 3, 2))
    for k in (dense, conv):
        np.testing.assert_allclose(float(pen.kernorth_penalty(k)), 4.0 / 9.0, rtol=1e-6)


def test_kernorth_tall_filter_matrix_is_used_as_is_by_hand():
    # W (3 filters × 2 fan-in) = [[2,0],[0,1],[0,0]]: W Wᵀ − I = diag(3, 0, −1) → 10/9.
    # (Transposed it would be diag(4, 1) − I → 9/4.)
    w = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(float(pen.kernorth_penalty(jnp.asarray(w.T))), 10.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(float(pen.kernorth_penalty(jnp.asarray(w.T.reshape(1, 1, 2, 3)))), 10.0 / 9.0,
                               rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (3, 3, 2, 4), (1, 1, 6, 3)])
def test_kernorth_matches_numpy(shape):
    k = _kernel(shape, seed=5)
    w = _rows(k)
    if w.shape[0] < w.shape[1]:
        w = w.T
    expected = np.mean((w @ w.T - np.eye(w.shape[0])) ** 2)
    np.testing.assert_allclose(float(pen.kernorth_penalty(jnp.asarray(k))), expected, rtol=1e-5)


# --------------------------------------------------------------------------
# Approximate-isometry penalty
# --------------------------------------------------------------------------


def test_isometry_penalty_by_hand_is_a_norm_not_its_square():
    # W̃ (fan_in 3, n 2) = [[1,1],[0,1],[0,0]]: W̃ᵀW̃ − I = [[0,1],[1,1]] → √3.
    k = jnp.asarray([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(float(pen.isometry_penalty(k)), np.sqrt(3.0), rtol=1e-6)
    # the conv layout (kh, kw, c_in, n) reshapes to (kh·kw·c_in, n) the same way
    np.testing.assert_allclose(float(pen.isometry_penalty(k.reshape(1, 1, 3, 2))), np.sqrt(3.0), rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (3, 3, 2, 4), (2, 5)])
def test_isometry_penalty_value_and_gradient_match_numpy(shape):
    k = _kernel(shape, seed=9)
    wt = k.reshape(-1, shape[-1]).astype(np.float64)  # (fan_in, n)
    d = wt.T @ wt - np.eye(shape[-1])
    norm = np.linalg.norm(d)
    value, grad = jax.value_and_grad(pen.isometry_penalty)(jnp.asarray(k))
    np.testing.assert_allclose(float(value), norm, rtol=1e-5)
    # d‖D‖/dW̃ = W̃ (D + Dᵀ) / ‖D‖ = 2 W̃ D / ‖D‖
    expected = (2.0 * wt @ d / norm).reshape(shape)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("k", [
    np.eye(3, 2, dtype=np.float32),
    np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 0.0]], np.float32),
    np.eye(4, dtype=np.float32)[[2, 0, 3, 1]].reshape(1, 1, 4, 4),
])  # fmt: skip
def test_isometry_penalty_has_a_finite_gradient_at_an_exactly_orthogonal_kernel(k):
    value, grad = jax.value_and_grad(pen.isometry_penalty)(jnp.asarray(k))
    assert float(value) == 0.0
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------
# OrthConv
# --------------------------------------------------------------------------


def _torch_conv2d(x, w, stride, padding):
    """``torch.conv2d(x, w, stride, padding)`` in numpy: NCHW input, OIHW weights, cross-correlation."""
    b, c, h, wd = x.shape
    o, c2, kh, kw = w.shape
    assert c == c2
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((b, o, ho, wo))
    for y in range(ho):
        for x_ in range(wo):
            patch = xp[:, :, y * stride:y * stride + kh, x_ * stride:x_ * stride + kw]  # (b, c, kh, kw)
            out[:, :, y, x_] = np.einsum("bcuv,ocuv->bo", patch, w)
    return out


def _orthconv_numpy(kernel, stride=2, padding=1):
    kt = np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1))  # (n, c_in, kh, kw)
    out = _torch_conv2d(kt, kt, stride, padding)
    n = kt.shape[0]
    target = np.zeros_like(out)
    ct = out.shape[-1] // 2  # the reference's int(np.floor(output.shape[-1] / 2))
    target[:, :, ct, ct] = np.eye(n)
    return np.linalg.norm(out - target)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (3, 3, 5, 3)])
def test_orthconv_3x3_matches_torch_semantics_self_convolution(shape):
    k = _kernel(shape, seed=21)
    expected = _orthconv_numpy(k)
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(k))), expected, rtol=1e-5)


def test_orthconv_other_stride_and_padding_match_numpy():
    k = _kernel((3, 3, 2, 4), seed=22)
    got = float(pen.orthconv_penalty(jnp.asarray(k), stride=1, padding=2))
    np.testing.assert_allclose(got, _orthconv_numpy(k, stride=1, padding=2), rtol=1e-5)


def test_orthconv_dense_and_1x1_use_the_taller_orientation_by_hand():
    # wide W (2 × 3) = [[1,1,0],[0,1,0]] → A = Wᵀ (3×2), AᵀA − I = [[1,1],[1,0]] → √3
    w = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(w.T))), np.sqrt(3.0), rtol=1e-6)
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(w.T.reshape(1, 1, 3, 2)))), np.sqrt(3.0),
                               rtol=1e-6)
    # tall W (3 × 2) = [[2,0],[0,1],[0,0]] → WᵀW − I = diag(3, 0) → 3
    w = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(w.T))), 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(w.T.reshape(1, 1, 2, 3)))), 3.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (1, 1, 4, 7)])
def test_orthconv_dense_matches_numpy(shape):
    k = _kernel(shape, seed=23)
    w = _rows(k)
    if w.shape[0] < w.shape[1]:
        w = w.T
    expected = np.linalg.norm(w.T @ w - np.eye(w.shape[1]))
    np.testing.assert_allclose(float(pen.orthconv_penalty(jnp.asarray(k))), expected, rtol=1e-5)


def test_kernorth_of_a_wide_layer_never_forms_the_large_gram_but_equals_it():
    """20 filters × 300 fan-in: the identity ‖AAᵀ−I‖² = ‖AᵀA‖² − 2‖A‖² + m, value and gradient."""
    rng = np.random.default_rng(7)
    kernel = jnp.asarray(rng.standard_normal((300, 20)) * 0.06, jnp.float32)

    def explicit(k):
        a = k.reshape(-1, k.shape[-1])  # (fan_in, n) = the transposed filter matrix
        return jnp.mean((a @ a.T - jnp.eye(a.shape[0])) ** 2)

    np.testing.assert_allclose(float(pen.kernorth_penalty(kernel)), float(explicit(kernel)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.grad(pen.kernorth_penalty)(kernel)), np.asarray(jax.grad(explicit)(kernel)),
                               rtol=1e-3, atol=1e-8)
