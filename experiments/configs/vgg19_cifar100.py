"""TPP paper: VGG19 (BN) on CIFAR-100 (REFERENCE §5; the paper's base: 74.02 %).

`*features*` pruned with the first conv (`*features.0`) skipped, batch 256,
weight decay 5e-4; the ratios and the two retraining schedules of Table 1
(the reference README runs "0.1 ~ 0.95"); the same 8 methods × 3 seeds.
"""

from isotpp.methods import TABLE1_METHODS
from isotpp.tables import BaseRecipe, TableSpec


def get_config() -> TableSpec:
    return TableSpec(
        name="vgg19_cifar100",
        title="VGG19 on CIFAR-100 (TPP paper)",
        model="vgg19",
        dataset="cifar100",
        ratios=tuple((str(r), f"*features*:{r}") for r in (0.3, 0.5, 0.7, 0.9, 0.95)),
        skip=("*features.0",),
        lr_schedules=(("0.01", "0:0.01,60:0.001,90:0.0001"), ("0.001", "0:0.001,80:0.0001")),
        methods=TABLE1_METHODS,
        seeds=(0, 1, 2),
        epochs=120,
        batch_size=256,
        wd=5e-4,
        base=BaseRecipe(epochs=200, lr_schedule="0:0.1,100:0.01,150:0.001"),
        prune_args=(("--lw-opp", "1000"), ("--update-reg-interval", "10"), ("--stabilize-reg-interval", "10000")),
    )
