"""The PyTorch networks the benchmarks time the reference against (imported only with torch installed).

ResNet56 as the TPP reference builds it (option-A shortcuts: stride-2 subsampling and
zero channel padding) and MLP-7-Linear (1024 → 100×6 → 10). Used by bench_spectrum.py,
bench_conv_step.py and bench_mlp_study.py, which run as scripts from this directory.
"""

import os

import torch
import torch.nn as tnn
import torch.nn.functional as F

torch.set_num_threads(os.cpu_count() or 1)


class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.pad = cout - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2)) if self.pad else x
        return F.relu(out + sc)


class ResNet56(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(9):
                blocks.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = tnn.Sequential(*blocks)
        self.linear = tnn.Linear(64, 10)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.blocks(F.relu(self.bn1(self.conv1(x)))), 1).flatten(1))


def mlp_7_linear(flatten: bool = False) -> tnn.Sequential:
    """1024 → 100 ×6 → 10, linear, with biases (``flatten``: accept images)."""
    layers, d = [], 1024
    for _ in range(6):
        layers.append(tnn.Linear(d, 100))
        d = 100
    layers.append(tnn.Linear(100, 10))
    return tnn.Sequential(*([tnn.Flatten()] if flatten else []), *layers)
