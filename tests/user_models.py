"""Small NNX models written the way a user would (not from the zoo), for the tracing, surgery,
saving and one-call pruning tests. Widths are arguments so tests can draw architectures."""

import itertools

import jax.numpy as jnp
from flax import nnx

from isotpp.models.resnet_cifar import ZeroPadShortcut


class MLP(nnx.Module):
    def __init__(self, widths=(8, 7), din=6, classes=3, seed=0):
        rngs = nnx.Rngs(seed)
        sizes = (din, *widths)
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], classes, rngs=rngs)

    def __call__(self, x):
        for layer in self.hidden:
            x = jnp.tanh(layer(x))
        return self.head(x)


class ConvBN(nnx.Module):
    """conv-BN-ReLU, max pool, conv (bias) -BN-ReLU, flatten (4×4 positions) into a dense classifier."""

    def __init__(self, c1=6, c2=5, classes=4, seed=0):
        rngs = nnx.Rngs(seed)
        self.c1 = nnx.Conv(3, c1, (3, 3), use_bias=False, rngs=rngs)
        self.b1 = nnx.BatchNorm(c1, rngs=rngs)
        self.c2 = nnx.Conv(c1, c2, (3, 3), strides=2, rngs=rngs)
        self.b2 = nnx.BatchNorm(c2, rngs=rngs)
        self.fc = nnx.Linear(c2 * 16, classes, rngs=rngs)

    def __call__(self, x):  # (B, 16, 16, 3)
        x = nnx.relu(self.b1(self.c1(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.relu(self.b2(self.c2(x)))
        return self.fc(x.reshape(x.shape[0], -1))


class Residual(nnx.Module):
    """stem, one basic block with an identity, option-A (fixed zero-padding map) or 1×1-projection shortcut."""

    def __init__(self, shortcut="id", stem=6, mid=5, out=8, classes=3, seed=0):
        rngs = nnx.Rngs(seed)
        out = stem if shortcut == "id" else out
        self.stem = nnx.Conv(3, stem, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(stem, rngs=rngs)
        self.a = nnx.Conv(stem, mid, (3, 3), use_bias=False, rngs=rngs)
        self.ba = nnx.BatchNorm(mid, rngs=rngs)
        stride = 1 if shortcut == "id" else 2
        self.b = nnx.Conv(mid, out, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bb = nnx.BatchNorm(out, rngs=rngs)
        self.shortcut = shortcut
        if shortcut == "A":
            self.short = ZeroPadShortcut(2, stem, out)
        elif shortcut == "B":
            self.proj = nnx.Conv(stem, out, (1, 1), strides=2, use_bias=False, rngs=rngs)
            self.bp = nnx.BatchNorm(out, rngs=rngs)
        self.fc = nnx.Linear(out, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        y = self.bb(self.b(nnx.relu(self.ba(self.a(x)))))
        if self.shortcut == "id":
            s = x
        elif self.shortcut == "A":
            s = self.short(x)
        else:
            s = self.bp(self.proj(x))
        return self.fc(nnx.relu(y + s).mean(axis=(1, 2)))


class Concat(nnx.Module):
    """Two branches concatenated on the channel axis, one BatchNorm over both, then a conv."""

    def __init__(self, p=4, q=5, r=6, classes=2, seed=0):
        rngs = nnx.Rngs(seed)
        self.p = nnx.Conv(3, p, (1, 1), rngs=rngs)
        self.q = nnx.Conv(3, q, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(p + q, rngs=rngs)
        self.r = nnx.Conv(p + q, r, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(r, classes, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn(jnp.concatenate([self.p(x), self.q(x)], axis=-1)))
        return self.fc(nnx.relu(self.r(y)).mean(axis=(1, 2)))


class Separable(nnx.Module):
    """A depthwise-separable block: 1×1 conv, BN, depthwise 3×3 (multiplier ``mult``), BN, 1×1 conv."""

    def __init__(self, c=6, mult=1, out=5, classes=3, seed=0):
        rngs = nnx.Rngs(seed)
        self.pw1 = nnx.Conv(3, c, (1, 1), rngs=rngs)
        self.b1 = nnx.BatchNorm(c, rngs=rngs)
        self.dw = nnx.Conv(c, c * mult, (3, 3), feature_group_count=c, rngs=rngs)
        self.b2 = nnx.BatchNorm(c * mult, rngs=rngs)
        self.pw2 = nnx.Conv(c * mult, out, (1, 1), rngs=rngs)
        self.fc = nnx.Linear(out, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.b1(self.pw1(x)))
        x = nnx.relu(self.b2(self.dw(x)))
        return self.fc(nnx.relu(self.pw2(x)).mean(axis=(1, 2)))


class LayerNormed(nnx.Module):
    """A LayerNorm over the hidden features: its statistics mix the channels of ``fc1``."""

    def __init__(self, seed=0):
        rngs = nnx.Rngs(seed)
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 7, rngs=rngs)
        self.head = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.fc2(self.norm(self.fc1(x)))))


class Sliced(nnx.Module):
    """Keeps only the first four channels of ``fc1``: a slice over channels."""

    def __init__(self, seed=0):
        rngs = nnx.Rngs(seed)
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.fc2 = nnx.Linear(4, 5, rngs=rngs)
        self.head = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.fc2(self.fc1(x)[:, :4])))


def make_convbn():
    """A zero-argument constructor in an importable module (recorded in model files)."""
    return ConvBN()


INPUTS = {MLP: (6,), ConvBN: (16, 16, 3), Residual: (8, 8, 3), Concat: (8, 8, 3), Separable: (8, 8, 3),
          LayerNormed: (6,), Sliced: (6,)}
