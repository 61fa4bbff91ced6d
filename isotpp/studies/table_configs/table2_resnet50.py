"""TPP paper, Table 2: ResNet-50 on ImageNet at the reference README's four settings.

Speedups 1.49× / 2.31× / 2.56× / 3.06× (`isotpp prune --dry-run` reproduces
them), retraining 90 epochs, LR 0:0.01,30:0.001,60:0.0001,75:0.00001, batch
256, weight decay 1e-4, TPP with update_reg_interval 5 and
stabilize_iters 40000 (the reference's
stabilize_reg_interval). The base is torchvision's pretrained ResNet-50
(76.13 %): convert it once, offline, with
``python -c "from isotpp.pruning.torch_convert import convert_file; convert_file('resnet50-0676ba61.pth', 'resnet50', 'resnet50_torchvision.npz')"``
and point ``base.path`` (or ISOTPP_RESNET50) at the result. ImageNet is read from
an ImageFolder tree given with --data-dir (train/<class>/*.JPEG, val/<class>/*.JPEG).
Published TPP top-1: 76.44 / 75.60 / 75.12 / 74.51.
"""

import os

from isotpp.studies.paper_tables import BaseRecipe, TableSpec

SETTINGS = (
    ("1.49x", "*layer[1-3]*conv[1-2]:0.3,*layer4*conv[1-2]:0.14"),
    ("2.31x", "*layer[1-3]*conv[1-2]:0.6,*layer4*conv[1-2]:0.21"),
    ("2.56x", "*layer[1-2]*conv[1-2]:0.74,*layer3*conv[1-2]:0.6,*layer4*conv[1-2]:0.21"),
    ("3.06x", "*layer[1-3]*conv[1-2]:0.68,*layer4*conv[1-2]:0.5"),
)


def get_config() -> TableSpec:
    return TableSpec(
        name="table2_resnet50",
        title="ResNet-50 on ImageNet (TPP paper, Table 2)",
        model="resnet50",
        dataset="imagenet",
        ratios=SETTINGS,
        lr_schedules=(("0.01", "0:0.01,30:0.001,60:0.0001,75:0.00001"),),
        methods=("L1", "TPP"),
        seeds=(0,),
        epochs=90,
        batch_size=256,
        weight_decay=1e-4,
        base=BaseRecipe(path=os.environ.get("ISOTPP_RESNET50", "resnet50_torchvision.npz")),
        prune_settings=(("update_reg_interval", 5), ("stabilize_iters", 40_000)),
        notes="convert torchvision's resnet50 weights with isotpp.pruning.torch_convert.convert_file and set ISOTPP_RESNET50",
    )
