"""OrthP and approximate isometry (REFERENCE §4): orthonormality, the QR sign
convention, exact isometry of a pruned linear MLP, and the masked AI descent."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from isotpp.errors import UserError
from isotpp.models import create_model, layer_names
from isotpp.models.program import flat_arrays
from isotpp.pruning.isometry import approximate_isometry, isometry_loss
from isotpp.pruning.orthp import orthogonalize, orthp
from isotpp.pruning.plan import hard_prune, l1_plan
from isotpp.spectra.jacobian import model_singular_values


def _kernel(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _torch_rows(kernel):
    """W (filters, fan_in) in float64 with the fan-in in PyTorch's order (c_in, kh, kw), built entry by entry."""
    k = np.asarray(kernel, np.float64)
    if k.ndim == 2:
        return k.T.copy()
    kh, kw, c_in, n = k.shape
    return np.array([[k[u, v, c, i] for c in range(c_in) for u in range(kh) for v in range(kw)] for i in range(n)])


def _tall(kernel):
    """The (transposed if needed) filter matrix that OrthP factorises, float64:
    W (filters, fan_in) in PyTorch's order, transposed when it has fewer rows than columns."""
    w = _torch_rows(kernel)
    return (w.T, True) if w.shape[0] < w.shape[1] else (w, False)


def _gram_schmidt(a):
    """Classical Gram–Schmidt on the columns of a (tall) matrix: the unique Q of
    a QR with a positive diagonal of R."""
    q = np.zeros_like(a)
    for j in range(a.shape[1]):
        v = a[:, j] - q[:, :j] @ (q[:, :j].T @ a[:, j])
        v -= q[:, :j] @ (q[:, :j].T @ v)  # re-orthogonalise
        q[:, j] = v / np.linalg.norm(v)
    return q


# Dense (fan_in, n): (3, 5) has more filters than inputs, (5, 3) fewer; conv (kh, kw, c_in, n);
# (2, 3, 2, 14) and (3, 3, 3, 32): non-square / square convs with more filters than fan-in and c_in > 1, where
# the fan-in order changes Q.
SHAPES = [(3, 5), (5, 3), (4, 4), (3, 3, 2, 4), (1, 1, 6, 3), (3, 3, 1, 12), (2, 3, 2, 14), (3, 3, 3, 32)]


@pytest.mark.parametrize("gain", [1.0, math.sqrt(2.0)])
@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonalize_gives_orthonormal_rows_or_columns_times_gain(shape, gain):
    k = _kernel(shape, seed=len(shape) + shape[-1])
    out = orthogonalize(k, gain)
    assert out.shape == k.shape and out.dtype == k.dtype
    m = np.asarray(out, np.float64).reshape(-1, shape[-1])  # (fan_in, n)
    fan_in, n = m.shape
    # whichever side is smaller gets the orthonormal vectors
    gram = m.T @ m if fan_in >= n else m @ m.T
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(fan_in, n)), atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonalize_is_the_qr_factor_with_positive_diagonal_of_r(shape):
    k = _kernel(shape, seed=3 * shape[-1])
    out = orthogonalize(k)
    a, _transposed = _tall(k)
    q_out, _ = _tall(out)  # the result in the same (tall) orientation
    assert q_out.shape == a.shape

    # numpy's QR, Q·sign(diag R) (REFERENCE §4)
    q, r = np.linalg.qr(a)
    np.testing.assert_allclose(q_out, q * np.sign(np.diag(r))[None, :], atol=1e-5)
    # independent: Gram–Schmidt, and R = Qᵀ A upper triangular with a positive diagonal
    np.testing.assert_allclose(q_out, _gram_schmidt(a), atol=1e-5)
    r_out = q_out.T @ a
    np.testing.assert_allclose(np.tril(r_out, -1), 0.0, atol=1e-5)
    assert np.all(np.diag(r_out) > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonalize_keeps_dtype_and_accepts_jax_arrays(dtype):
    k = _kernel((3, 3, 2, 4), seed=1, dtype=dtype)
    out_np = orthogonalize(k, 2.0)
    assert out_np.dtype == dtype and out_np.shape == k.shape
    out_jax = orthogonalize(jnp.asarray(k, jnp.float32), 2.0)
    assert np.asarray(out_jax).dtype == np.float32 and out_jax.shape == k.shape
    np.testing.assert_allclose(np.asarray(out_jax, np.float64), np.asarray(out_np, np.float64), atol=1e-5)


def test_orthogonalize_dense_by_hand():
    # kernel (fan_in 2, n 2) = [[3, 4], [0, 5]] → W = kernelᵀ = [[3, 0], [4, 5]] (rows = filters).
    # QR orthonormalises W's columns c0 = (3, 4), c1 = (0, 5): q0 = (0.6, 0.8);
    # c1 − (c1·q0) q0 = (0, 5) − 4 (0.6, 0.8) = (−2.4, 1.8) → q1 = (−0.8, 0.6); R = [[5, 4], [0, 3]].
    # W_out = [q0 q1] = [[0.6, −0.8], [0.8, 0.6]], back in the kernel layout as its transpose.
    k = np.array([[3.0, 4.0], [0.0, 5.0]], np.float32)
    np.testing.assert_allclose(orthogonalize(k), [[0.6, 0.8], [-0.8, 0.6]], atol=1e-6)
    np.testing.assert_allclose(orthogonalize(k, 2.0), [[1.2, 1.6], [-1.6, 1.2]], atol=1e-6)


def _conv_from_torch_rows(w, kh, kw, c_in):
    """Inverse of :func:`_torch_rows` for a conv: kernel[u, v, c, i] = w[i, (c·kh + u)·kw + v]."""
    n = w.shape[0]
    k = np.zeros((kh, kw, c_in, n))
    for i in range(n):
        for c in range(c_in):
            for u in range(kh):
                for v in range(kw):
                    k[u, v, c, i] = w[i, (c * kh + u) * kw + v]
    return k


def test_orthogonalize_conv_in_torch_fan_in_order_by_hand():
    """A 1×2 conv, c_in 2, 5 filters (more filters than fan-in 4: no transpose, so the order matters).

    In PyTorch's order the filter matrix is W = [D; 0] with D upper triangular, diag (2, −3, 1, 4):
    its QR with a positive diagonal of R is Q = [diag(1, −1, 1, 1); 0]: OrthP maps W to that Q
    (−1 where D's diagonal is negative, the extra filter stays 0). Flattening in Flax's order
    (kh, kw, c_in) would permute the columns of W and give a different Q.
    """
    w = np.array([[2.0, 1.0, 5.0, -1.0],
                  [0.0, -3.0, 1.0, 2.0],
                  [0.0, 0.0, 1.0, 1.0],
                  [0.0, 0.0, 0.0, 4.0],
                  [0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    k = _conv_from_torch_rows(w, 1, 2, 2)
    np.testing.assert_array_equal(_torch_rows(k), w)
    expected = np.zeros((5, 4))
    expected[[0, 1, 2, 3], [0, 1, 2, 3]] = [1.0, -1.0, 1.0, 1.0]
    out = orthogonalize(k)
    np.testing.assert_allclose(_torch_rows(out), expected, atol=1e-12)
    np.testing.assert_allclose(_torch_rows(orthogonalize(k, 3.0)), 3.0 * expected, atol=1e-12)
    # the Flax-order flattening (the former behaviour) is a different orthogonal matrix
    flax_w = k.reshape(-1, 5).T
    q, r = np.linalg.qr(flax_w)
    flax_q = q * np.sign(np.diag(r))[None, :]
    assert np.abs(flax_q - out.reshape(-1, 5).T).max() > 0.5


def test_orthogonalize_sign_of_a_zero_diagonal_is_zero_like_the_reference():
    """Dense W (3 filters × 2 fan-in) = [[1, 0], [0, 0], [0, 0]]: R = [[±1, 0], [0, 0]], sign(0) = 0 zeroes
    Q's second column (torch.sign(0) = 0 in the reference): OrthP(W) = W. With ``zero_sign=1`` the column
    is kept, a unit vector orthogonal to e₁."""
    k = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # (fan_in 2, n 3) = Wᵀ
    np.testing.assert_array_equal(orthogonalize(k), k)
    kept = orthogonalize(k, zero_sign=1.0).T  # (3, 2)
    np.testing.assert_allclose(kept[:, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(kept.T @ kept, np.eye(2), atol=1e-12)


# --------------------------------------------------------------------------
# OrthP on a model
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_mlp_7_linear():
    m = create_model("mlp_7_linear", init="torch", seed=0)
    small = hard_prune(m, l1_plan(m, "*:0.8", ["net.12"]))
    return small


def _copy(model):
    return nnx.clone(model)


def test_orthp_on_l1_pruned_mlp_7_linear_gives_exact_isometry(pruned_mlp_7_linear):
    model = _copy(pruned_mlp_7_linear)
    before = model_singular_values(model, None, method="linear")
    assert before.shape == (1, 10)
    assert np.abs(before - 1).max() > 0.5  # L1 pruning alone is far from isometry
    biases = {k: np.asarray(v) for k, v in flat_arrays(nnx.state(model)).items() if k.endswith("bias")}

    assert orthp(model) is model
    jsv = model_singular_values(model, None, method="linear")
    np.testing.assert_allclose(jsv, 1.0, atol=1e-4)
    # and it is the product of the kernels: J Jᵀ = I computed by hand in float64
    j = np.eye(1024)
    for name in layer_names(model):
        j = j @ np.asarray(flat_arrays(nnx.state(model))[f"{name}.kernel"], np.float64)
    np.testing.assert_allclose(j.T @ j, np.eye(10), atol=1e-4)
    # biases are not kernels: untouched
    after = flat_arrays(nnx.state(model))
    for k, v in biases.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v)


def test_orthp_relu_gain_scales_every_kernel_by_sqrt2(pruned_mlp_7_linear):
    lin = orthp(_copy(pruned_mlp_7_linear), "linear")
    relu = orthp(_copy(pruned_mlp_7_linear), act="relu")
    a, b = flat_arrays(nnx.state(lin)), flat_arrays(nnx.state(relu))
    kernels = [f"{n}.kernel" for n in layer_names(lin)]
    assert len(kernels) == 7
    for name in kernels:
        np.testing.assert_allclose(np.asarray(b[name]), math.sqrt(2.0) * np.asarray(a[name]), rtol=1e-6, atol=1e-7)
    jsv = model_singular_values(relu, None, method="linear")
    np.testing.assert_allclose(jsv, math.sqrt(2.0) ** 7, rtol=1e-4)


def test_orthp_orthogonalizes_conv_kernels_of_a_cnn():
    m = create_model("lenet5", init="torch", seed=1)
    orthp(m, "relu")
    params = flat_arrays(nnx.state(m))
    for name in layer_names(m):
        k = np.asarray(params[f"{name}.kernel"], np.float64)
        mat = k.reshape(-1, k.shape[-1])
        gram = mat.T @ mat if mat.shape[0] >= mat.shape[1] else mat @ mat.T
        np.testing.assert_allclose(gram, 2.0 * np.eye(min(mat.shape)), atol=1e-5, err_msg=name)


def test_orthp_rejects_unknown_activation(pruned_mlp_7_linear):
    with pytest.raises(UserError, match="gelu"):
        orthp(_copy(pruned_mlp_7_linear), "gelu")


# --------------------------------------------------------------------------
# Approximate isometry
# --------------------------------------------------------------------------


def _ai_loss_numpy(kernels, masks):
    total = 0.0
    for name, k in kernels.items():
        k = np.asarray(k, np.float64)
        if name in masks:
            k = k * masks[name]
        w = k.reshape(-1, k.shape[-1])
        total += np.linalg.norm(w.T @ w - np.eye(w.shape[1]))
    return total


def _ai_problem(seed=0):
    rng = np.random.default_rng(seed)
    kernels = {"a": rng.normal(size=(6, 4)).astype(np.float32),
               "b": (0.5 * rng.normal(size=(3, 3, 2, 5))).astype(np.float32)}
    masks = {"a": (rng.random((6, 4)) > 0.3).astype(np.float32)}
    return kernels, masks


def test_isometry_loss_matches_numpy():
    kernels, masks = _ai_problem()
    got = float(isometry_loss({k: jnp.asarray(v) for k, v in kernels.items()},
                              {k: jnp.asarray(v) for k, v in masks.items()}))
    np.testing.assert_allclose(got, _ai_loss_numpy(kernels, masks), rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_approximate_isometry_lowers_the_loss_and_keeps_the_mask(masked):
    kernels, masks = _ai_problem()
    masks = masks if masked else {}
    before = _ai_loss_numpy(kernels, masks)
    out = approximate_isometry(kernels, masks or None, iters=200, lr=0.1)
    assert set(out) == set(kernels)
    for name, k in kernels.items():
        assert out[name].shape == k.shape and out[name].dtype == k.dtype
    after = _ai_loss_numpy(out, masks)
    assert after < before / 10, (before, after)
    if masked:
        pruned = masks["a"] == 0
        assert pruned.any() and np.all(np.asarray(out["a"])[pruned] == 0.0)
        assert np.all(np.asarray(out["a"])[~pruned] != kernels["a"][~pruned])


def test_approximate_isometry_one_step_is_masked_sgd_on_the_closed_form_gradient():
    kernels, masks = _ai_problem(seed=4)
    out = approximate_isometry(kernels, masks, iters=1, lr=0.1)
    for name, k in kernels.items():
        m = masks.get(name, np.ones_like(k)).astype(np.float64)
        wt = (k * m).astype(np.float64).reshape(-1, k.shape[-1])
        d = wt.T @ wt - np.eye(k.shape[-1])
        grad = (2.0 * wt @ d / np.linalg.norm(d)).reshape(k.shape) * m  # chain rule through W ⊙ mask
        expected = (k * m - 0.1 * grad) * m
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_approximate_isometry_zero_iterations_only_applies_the_mask():
    kernels, masks = _ai_problem(seed=2)
    out = approximate_isometry(kernels, masks, iters=0)
    np.testing.assert_array_equal(np.asarray(out["a"]), kernels["a"] * masks["a"])
    np.testing.assert_array_equal(np.asarray(out["b"]), kernels["b"])
