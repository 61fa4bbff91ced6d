"""TPP paper, Table 2: ResNet-34 on ImageNet (base: torchvision's, 73.31 %), the paper's one point, 1.32x.

The paper compares at Li et al.'s (2017) "ResNet-34-pruned-B" architecture,
which it gives as 1.32x. The TPP reference's README has no ResNet-34 script;
the setting is the one of Li et al.'s public L1-norm pruning code for
ImageNet ResNet-34 (as in Liu et al.'s "Rethinking the value of network
pruning", imagenet/l1-norm-pruning): only the first conv of each basic block
is pruned, at 50 % / 60 % / 40 % / 0 % in stages 1–4, keeping
int(n · (1 − p)) filters (the same counts as our ceil(p · n) pruned), and the
"sensitive" blocks 2, 8, 14, 16, 26, 28, 30, 32 of its 3×3-conv count are
skipped: layer1.0, layer2.0, layer2.3, layer3.0, layer3.5 and all of
layer4. In our layer names that is the pattern below: 8 convs change width
(64→32 ×2, 128→51 ×2, 256→153 ×4), 3.664 → 2.782 GMACs, a speedup of 1.32x
(exactly and with the paper's rounding), 10.68 % fewer parameters. (Li et
al. report 24.2 % fewer FLOPs and 10.8 % fewer parameters, counted their
way; `isotpp prune --dry-run` gives 24.06 % and 10.68 %.)

Same schedule and TPP settings as the ResNet-50 config. Convert torchvision's
weights with ``isotpp.pruning.torch_convert.convert_file(src, 'resnet34', dst)`` and set
ISOTPP_RESNET34.
"""

import dataclasses
import os

from isotpp.studies.paper_tables import BaseRecipe, TableSpec, load_spec

PRUNED_B = "layer1.[12].conv1:0.5,layer2.[12].conv1:0.6,layer3.[1-4].conv1:0.4"
SETTINGS = (("1.32x", PRUNED_B),)


def get_config() -> TableSpec:
    return dataclasses.replace(
        load_spec("table2_resnet50"),  # the schedule, methods and TPP settings
        name="table2_resnet34",
        title="ResNet-34 on ImageNet (TPP paper, Table 2)",
        model="resnet34",
        ratios=SETTINGS,
        base=BaseRecipe(path=os.environ.get("ISOTPP_RESNET34", "resnet34_torchvision.npz")),
        notes="convert torchvision's resnet34 weights with isotpp.pruning.torch_convert.convert_file and set ISOTPP_RESNET34",
    )
