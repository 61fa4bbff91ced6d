"""Kernel penalties (REFERENCE §3–§4): values and gradients against hand
computations and independent numpy routes, in dense, 1×1 and 3×3 layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isotpp.pruning import penalties as pen

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


# --------------------------------------------------------------------------
# The reference's functions (REFERENCE §3): torch_filters, orth_dist,
# orth_regularization, deconv_orth_dist, and the four baseline paths
# --------------------------------------------------------------------------


def _torch_weight(kernel):
    """The PyTorch weight (n, c_in, kh, kw) or (n, fan_in) of a Flax kernel, float64."""
    k = np.asarray(kernel, np.float64)
    return k.T.copy() if k.ndim == 2 else np.transpose(k, (3, 2, 0, 1))


def _torch_w(kernel):
    """The reference's ``w.view(n, -1)`` of a Flax kernel, float64."""
    w = _torch_weight(kernel)
    return w.reshape(w.shape[0], -1)


def _orth_dist_np(weight):
    mat = weight.reshape(weight.shape[0], -1)
    if mat.shape[0] < mat.shape[1]:
        mat = mat.T
    return np.linalg.norm(mat.T @ mat - np.eye(mat.shape[1]))


def _orth_regularization_np(weight, transpose=True):
    w_ = weight.reshape(weight.shape[0], -1)
    if transpose and w_.shape[0] < weight.shape[1]:  # the reference compares with w.size(1): c_in for a conv
        w_ = w_.T
    return np.mean((w_ @ w_.T - np.eye(w_.shape[0])) ** 2)


def _deconv_orth_dist_np(weight):
    out = _torch_conv2d(weight, weight, 2, 1)
    target = np.zeros_like(out)
    ct = out.shape[-1] // 2
    target[:, :, ct, ct] = np.eye(weight.shape[0])
    return np.linalg.norm(out - target)


def test_torch_filters_is_the_pytorch_view_and_round_trips():
    k = _kernel((2, 3, 4, 5), seed=30)  # (kh, kw, c_in, n): entry [i, (c·kh + u)·kw + v] is k[u, v, c, i]
    w = np.asarray(pen.torch_filters(k))
    for u, v, c, i in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 2, 1, 3), (1, 0, 2, 1)]:
        assert w[i, (c * 2 + u) * 3 + v] == k[u, v, c, i]
    for shape in [(3, 4), (2, 3, 2, 5), (3, 3, 4, 2)]:
        k = _kernel(shape, seed=31)
        w = np.asarray(pen.torch_filters(k))
        np.testing.assert_array_equal(w, _torch_w(k).astype(np.float32))
        np.testing.assert_array_equal(np.asarray(pen.from_torch_filters(w, shape)), k)
        np.testing.assert_array_equal(np.asarray(pen.torch_filters(jnp.asarray(k))), w)


def test_orth_dist_by_hand_is_a_norm_of_the_smaller_gram():
    # wide W (2 × 3) = [[1,1,0],[0,1,0]] → M = Wᵀ, MᵀM = W Wᵀ = [[2,1],[1,1]], minus I → [[1,1],[1,0]] → √3
    w = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(float(pen.orth_dist(jnp.asarray(w.T))), np.sqrt(3.0), rtol=1e-6)
    # tall W (3 × 2) = [[2,0],[0,1],[0,0]] → WᵀW − I = diag(3, 0) → 3 (not 9: not squared; not 9/4: not averaged)
    w = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(float(pen.orth_dist(jnp.asarray(w.T))), 3.0, rtol=1e-6)
    # a non-square conv (1×2, c_in 2, 5 filters ≥ fan-in 4): M = W (5×4) tall, WᵀW = diag(1, 4, 1, 1) → 3
    w = np.zeros((5, 4))
    w[0, 0], w[1, 1], w[2, 2], w[3, 3] = 1.0, 2.0, 1.0, -1.0
    k = np.transpose(w.reshape(5, 2, 1, 2), (2, 3, 1, 0))  # (kh 1, kw 2, c_in 2, n 5)
    np.testing.assert_array_equal(_torch_w(k), w)
    np.testing.assert_allclose(float(pen.orth_dist(jnp.asarray(k))), 3.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 6), (1, 1, 4, 7), (2, 3, 2, 14)])
def test_orth_dist_value_and_gradient_match_numpy(shape):
    k = _kernel(shape, seed=33)
    m = _torch_w(k)
    value, grad = jax.value_and_grad(pen.orth_dist)(jnp.asarray(k))
    np.testing.assert_allclose(float(value), _orth_dist_np(_torch_weight(k)), rtol=1e-5)
    # d‖D‖/dM with D = MᵀM − I (M tall) is 2 M D / ‖D‖; for a wide W, M = Wᵀ
    tall = m if m.shape[0] >= m.shape[1] else m.T
    d = tall.T @ tall - np.eye(tall.shape[1])
    g = 2.0 * tall @ d / np.linalg.norm(d)
    g_w = g if m.shape[0] >= m.shape[1] else g.T
    expected = np.asarray(pen.from_torch_filters(g_w, shape))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6)


def test_orth_dist_has_gradient_zero_at_an_exactly_orthogonal_kernel():
    value, grad = jax.value_and_grad(pen.orth_dist)(jnp.eye(3, 2))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_orth_regularization_reference_rule_compares_filters_with_input_channels_by_hand():
    # conv 1×2, c_in 2, n 3: fan-in 4. W (torch order) = [[1,0,0,0],[0,1,1,0],[0,0,0,2]].
    # The reference: 3 < c_in 2 is false → no transpose: W Wᵀ = diag(1, 2, 4), minus I → diag(0, 1, 3): 10/9.
    # The fan-in rule: 3 < 4 → transposed: WᵀW − I = [[0,0,0,0],[0,0,1,0],[0,1,0,0],[0,0,0,3]]: 11/16.
    w = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    k = jnp.asarray(np.transpose(w.reshape(3, 2, 1, 2), (2, 3, 1, 0)))
    np.testing.assert_allclose(float(pen.orth_regularization(k)), 10.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(float(pen.orth_regularization(k, rule="fan_in")), 11.0 / 16.0, rtol=1e-6)
    np.testing.assert_allclose(float(pen.kernorth_penalty(k)), 11.0 / 16.0, rtol=1e-6)
    np.testing.assert_allclose(float(pen.orth_regularization(k, transpose=False, rule="fan_in")), 10.0 / 9.0,
                               rtol=1e-6)
    # c_in 4, n 3 (a 1×1 conv, c_in = fan-in): both rules transpose
    k1 = jnp.asarray(w.T.reshape(1, 1, 4, 3))
    np.testing.assert_allclose(float(pen.orth_regularization(k1)), 11.0 / 16.0, rtol=1e-6)
    with pytest.raises(ValueError, match="rule"):
        pen.orth_regularization(k, rule="n")


@pytest.mark.parametrize("shape,transpose", [((3, 6), True), ((1, 1, 7, 4), True), ((3, 3, 2, 4), True),
                                             ((3, 3, 8, 4), True), ((2, 3, 2, 14), True), ((3, 3, 8, 4), False)])
def test_orth_regularization_matches_the_reference_in_numpy(shape, transpose):
    k = _kernel(shape, seed=35) * 0.3
    value, grad = jax.value_and_grad(lambda x: pen.orth_regularization(x, transpose))(jnp.asarray(k))
    np.testing.assert_allclose(float(value), _orth_regularization_np(_torch_weight(k), transpose), rtol=1e-5)
    # gradient: dmean((AAᵀ−I)²)/dA = 4 (AAᵀ − I) A / m², A = W or Wᵀ as transposed
    w = _torch_w(k)
    a = w.T if transpose and w.shape[0] < _torch_weight(k).shape[1] else w
    m = a.shape[0]
    g = 4.0 * (a @ a.T - np.eye(m)) @ a / m**2
    g_w = g.T if a is not w else g
    np.testing.assert_allclose(np.asarray(grad), np.asarray(pen.from_torch_filters(g_w, shape)), rtol=1e-4,
                               atol=1e-7)


def test_deconv_orth_dist_by_hand():
    # one 3×3 filter of ones: padded by 1 to 5×5, stride 2 → four taps (0,0), (0,2), (2,0), (2,2), each the
    # kernel's overlap with itself shifted by one row and one column: 2×2 = 4 ones. The target puts 1 at the
    # tap (1, 1): ‖[[4, 4], [4, 4 − 1]]‖ = √(3·16 + 9) = √57 (the aligned inner product, 9, never appears).
    np.testing.assert_allclose(float(pen.deconv_orth_dist(jnp.ones((3, 3, 1, 1)))), np.sqrt(57.0), rtol=1e-6)
    # a non-square 1×2 conv with more filters (3) than fan-in (2): kernel height 1, so stride 2 only visits the
    # padding rows 0 and 2: the self-convolution is 0 whatever the weights, the distance √n, its gradient 0
    k = jnp.asarray(_kernel((1, 2, 1, 3), seed=36))
    value, grad = jax.value_and_grad(pen.deconv_orth_dist)(k)
    np.testing.assert_allclose(float(value), np.sqrt(3.0), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize("shape", [(3, 3, 5, 3), (2, 3, 2, 5)])
def test_deconv_orth_dist_matches_the_reference_in_numpy(shape):
    k = _kernel(shape, seed=37)
    np.testing.assert_allclose(float(pen.deconv_orth_dist(jnp.asarray(k))), _deconv_orth_dist_np(_torch_weight(k)),
                               rtol=1e-5)


# A small "network" in forward order: a 3×3 stem with fewer filters than fan-in, a non-square conv with
# more filters than fan-in, a 1×1 conv, a 3×3 conv with c_in ≤ n < fan-in, and two dense layers.
NET = {"stem": (3, 3, 3, 8), "a": (1, 3, 8, 30), "b": (1, 1, 30, 12), "c": (3, 3, 12, 16), "fc1": (16, 20),
       "fc2": (20, 10)}


def _reference_path_np(kind, kernels):
    """The reference's four sums, in numpy on PyTorch-layout weights, as main.py / opp_pruner.py write them."""
    total = 0.0
    for i, (name, k) in enumerate(kernels.items()):
        w = _torch_weight(k)
        pointwise = w.ndim == 2 or w.shape[-1] == 1
        if kind == "kernorth":  # main.py, orth_reg_method CVPR17
            total += _orth_dist_np(w)
        elif kind == "orthconv":  # main.py, orth_reg_method CVPR20: cnt != 0
            if i != 0:
                total += _orth_dist_np(w) if pointwise else _deconv_orth_dist_np(w)
        elif kind == "kernorth_v2":  # opp_pruner.py, opp_scheme v2 (transpose=True)
            total += _orth_regularization_np(w, True)
        elif kind == "orthconv_v1":  # opp_pruner.py, opp_scheme v1
            total += _orth_regularization_np(w) if pointwise else _deconv_orth_dist_np(w)
    return total


@pytest.mark.parametrize("kind", ["kernorth", "orthconv", "kernorth_v2", "orthconv_v1"])
def test_each_baseline_path_matches_the_reference_sum_in_float64(kind):
    from isotpp.pruning.methods import penalty_fn

    rng = np.random.default_rng(41)
    kernels = {n: rng.normal(size=s) / np.sqrt(np.prod(s[:-1])) for n, s in NET.items()}
    params = {n: {"kernel": jnp.asarray(k, jnp.float32)} for n, k in kernels.items()}
    got = float(jax.jit(penalty_fn(kind, [f"{n}.kernel" for n in NET]))(params))
    np.testing.assert_allclose(got, _reference_path_np(kind, kernels), rtol=2e-5)


def test_the_baseline_paths_differ_where_the_reference_does():
    """L1+OrthConv skips the first layer, OrthConv+L1 does not; L1+KernOrth's norm has a far larger gradient
    than KernOrth+L1's mean of squares on a large layer."""
    from isotpp.pruning.methods import penalty_fn

    names = [f"{n}.kernel" for n in NET]
    stem = _kernel(NET["stem"], seed=43) / np.sqrt(27.0)
    zeros = {n: {"kernel": jnp.zeros(s)} for n, s in NET.items()}
    only_stem = {**zeros, "stem": {"kernel": jnp.asarray(stem)}}
    cvpr20, v1 = jax.jit(penalty_fn("orthconv", names)), jax.jit(penalty_fn("orthconv_v1", names))
    assert float(cvpr20(only_stem)) == pytest.approx(float(cvpr20(zeros)), rel=1e-6)  # the stem is not seen
    np.testing.assert_allclose(float(v1(only_stem)) - float(v1(zeros)),
                               _deconv_orth_dist_np(_torch_weight(stem)) - np.sqrt(NET["stem"][-1]), rtol=1e-4)
    # per layer: the gradient of the norm form is far larger than that of the mean-of-squares form
    k = jnp.asarray(_kernel(NET["c"], seed=44) / np.sqrt(108.0))
    g17 = jax.jit(jax.grad(pen.orth_dist))(k)
    g_v2 = jax.jit(jax.grad(pen.orth_regularization))(k)
    assert float(jnp.linalg.norm(g17)) > 20 * float(jnp.linalg.norm(g_v2))
