"""TPP paper, Table 2: ResNet-34 on ImageNet (base: torchvision's, 73.31 %).

The ResNet-50 ratio settings applied to the first conv of every basic block
(a basic block's conv2 feeds the residual add, so `conv[1-2]` would cut into
the residual streams, which the reference does not prune). Same schedule and
TPP settings as the ResNet-50 config. Convert torchvision's weights with
``isotpp.convert.convert_file(src, 'resnet34', dst)`` and set ISOTPP_RESNET34.
"""

import dataclasses
import os

from isotpp.tables import BaseRecipe, TableSpec, load_spec

SETTINGS = (
    ("s1", "*layer[1-3]*conv1:0.3,*layer4*conv1:0.14"),
    ("s2", "*layer[1-3]*conv1:0.6,*layer4*conv1:0.21"),
    ("s3", "*layer[1-2]*conv1:0.74,*layer3*conv1:0.6,*layer4*conv1:0.21"),
    ("s4", "*layer[1-3]*conv1:0.68,*layer4*conv1:0.5"),
)


def get_config() -> TableSpec:
    return dataclasses.replace(
        load_spec("table2_resnet50"),  # the schedule, methods and TPP settings
        name="table2_resnet34",
        title="ResNet-34 on ImageNet (TPP paper, Table 2)",
        model="resnet34",
        ratios=SETTINGS,
        base=BaseRecipe(path=os.environ.get("ISOTPP_RESNET34", "resnet34_torchvision.npz")),
        notes="convert torchvision's resnet34 weights with isotpp.convert.convert_file and set ISOTPP_RESNET34",
    )
