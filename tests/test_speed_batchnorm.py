"""The models' BatchNorm (isotpp.models.layers.BatchNorm, a hand-written VJP in batch-statistics mode) gives
nnx.BatchNorm's values: the forward and running statistics bit for bit, gradients to float rounding, and a
ResNet's batch-mode Jacobian spectrum unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isotpp import spectrum as sp
from isotpp.models import create_model
from isotpp.models.layers import BatchNorm


def _pair(features=5, seed=0):
    ours = BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(seed))
    theirs = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(seed))
    k1, k2 = jax.random.split(jax.random.key(seed))
    for bn in (ours, theirs):
        bn.scale[...] = 1 + 0.3 * jax.random.normal(k1, (features,))
        bn.bias[...] = 0.2 * jax.random.normal(k2, (features,))
    return ours, theirs


def test_values_and_gradients_match_nnx_batchnorm():
    ours, theirs = _pair()
    x = 2.0 + 3.0 * jax.random.normal(jax.random.key(3), (6, 4, 4, 5))
    x = x.at[..., 0].set(1.5)  # a constant channel: variance 0 (clipped), as in a pruned network
    w = jax.random.normal(jax.random.key(4), x.shape)

    def loss(bn, x):
        return jnp.sum(jnp.tanh(bn(x)) * w)

    (l1, (g1, gx1)), (l2, (g2, gx2)) = (jax.value_and_grad(loss, argnums=(0, 1))(bn, x) for bn in (ours, theirs))
    np.testing.assert_array_equal(ours(x), theirs(x))
    np.testing.assert_array_equal(ours.mean[...], theirs.mean[...])
    np.testing.assert_array_equal(ours.var[...], theirs.var[...])
    assert l1 == l2
    np.testing.assert_allclose(gx1, gx2, rtol=2e-5, atol=2e-6 * float(jnp.abs(gx2).max()))
    for a, b in zip(jax.tree.leaves(nnx.state(g1, nnx.Param)), jax.tree.leaves(nnx.state(g2, nnx.Param))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # eval mode is nnx.BatchNorm's own path
    ours.eval(), theirs.eval()
    np.testing.assert_array_equal(ours(x), theirs(x))


class _TinyConvNet(nnx.Module):
    def __init__(self, bn_cls, rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = bn_cls(6, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(6 * 8 * 8, 5, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.conv(x))).reshape(x.shape[0], -1))


def test_batch_mode_spectrum_unchanged():
    """The batch-statistics JSV (rows coupled through the batch statistics) with our BatchNorm equals the one
    with nnx.BatchNorm's autodiff."""
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
    ours, theirs = (sp.model_singular_values(_TinyConvNet(cls, nnx.Rngs(0)), x, method="gram", bn="batch")
                    for cls in (BatchNorm, nnx.BatchNorm))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.max()))
    eval_mode = sp.model_singular_values(_TinyConvNet(BatchNorm, nnx.Rngs(0)), x, method="gram", bn="eval")
    assert np.abs(eval_mode - ours).max() > 1e-3 * theirs.max()  # the coupling is really there


def test_the_models_use_it():
    model = nnx.eval_shape(lambda: create_model("resnet20", seed=0))
    assert sum(isinstance(m, BatchNorm) for _, m in nnx.iter_modules(model)) == 19
