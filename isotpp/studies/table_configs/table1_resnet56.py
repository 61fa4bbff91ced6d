"""TPP paper, Table 1: ResNet56 on CIFAR-10 (REFERENCE §5).

Base: 200 epochs from scratch, LR 0.1, x0.1 at epochs 100 and 150, batch 128,
weight decay 5e-4 (the paper's base reaches 93.78 %). Pruning `*layer*.conv1`
(the first conv of every residual block) at 0.3 / 0.5 / 0.7 / 0.9 / 0.95;
retraining 120 epochs at LR 1e-2 (0:0.01,60:0.001,90:0.0001) or 1e-3
(0:0.001,80:0.0001); 8 methods × 3 seeds: 240 runs + 3 base models.
TPP: lw_opp 1000, update_reg_interval 10, stabilize_iters 10000.
KernOrth+L1 / OrthConv+L1: the same lw_opp, constant (the reference's opp_scheme
v2 / v1), 50,000 iterations; L1+KernOrth / L1+OrthConv: lw_orth_reg 0.1
(orth_reg_method CVPR17 / CVPR20). See docs/fidelity.md.
"""

from isotpp.pruning.methods import TABLE1_METHODS
from isotpp.studies.paper_tables import BaseRecipe, TableSpec


def get_config() -> TableSpec:
    return TableSpec(
        name="table1_resnet56",
        title="ResNet56 on CIFAR-10 (TPP paper, Table 1)",
        model="resnet56",
        dataset="cifar10",
        ratios=tuple((str(r), f"*layer*.conv1:{r}") for r in (0.3, 0.5, 0.7, 0.9, 0.95)),
        lr_schedules=(("0.01", "0:0.01,60:0.001,90:0.0001"), ("0.001", "0:0.001,80:0.0001")),
        methods=TABLE1_METHODS,
        seeds=(0, 1, 2),
        epochs=120,
        batch_size=128,
        weight_decay=5e-4,
        base=BaseRecipe(epochs=200, lr_schedule="0:0.1,100:0.01,150:0.001"),
        prune_settings=(("lw_opp", 1000.0), ("update_reg_interval", 10), ("stabilize_iters", 10_000)),
    )
