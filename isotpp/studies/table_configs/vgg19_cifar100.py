"""TPP paper: VGG19 (BN) on CIFAR-100 (REFERENCE §5; the paper's base: 74.02 %).

`*features*` pruned with the first conv (`*features.0`) skipped, batch 256,
weight decay 5e-4; the ratios and the two retraining schedules of Table 1
(the reference README runs "0.1 ~ 0.95"); the same 8 methods × 3 seeds.
"""

import dataclasses

from isotpp.studies.paper_tables import TableSpec, load_spec


def get_config() -> TableSpec:
    table1 = load_spec("table1_resnet56")  # the ratios, schedules, methods, seeds, base recipe and TPP settings
    return dataclasses.replace(
        table1,
        name="vgg19_cifar100",
        title="VGG19 on CIFAR-100 (TPP paper)",
        model="vgg19",
        dataset="cifar100",
        ratios=tuple((label, f"*features*:{label}") for label, _ in table1.ratios),
        skip=("*features.0",),
        batch_size=256,
    )
