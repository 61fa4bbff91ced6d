"""The settings of one pruning run (:func:`isotpp.studies.pruning_run.run_pruning`, ``isotpp prune``).

Kept apart from the run itself so that the command line can read the
defaults without importing JAX.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from isotpp.errors import UserError

BASE_LR = "0:0.1,100:0.01,150:0.001"  # the paper's CIFAR base recipe (200 epochs)
RETRAIN_LR = "0:0.01,60:0.001,90:0.0001"


@dataclasses.dataclass
class PruneConfig:
    """Everything one run needs; the defaults are the paper's ResNet56 / CIFAR-10 settings."""

    model: str = "resnet56"
    dataset: str = "cifar10"
    data_dir: str | None = None
    method: str = "TPP"
    ratios: str = "*layer*.conv1:0.5"
    skip: tuple[str, ...] = ()
    base: str | None = None  # model file (.npz isotpp, .pth PyTorch); None: train one
    base_epochs: int = 200
    base_lr_schedule: str = BASE_LR
    epochs: int = 120
    lr_schedule: str = RETRAIN_LR
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0
    init: str = "kaiming"
    tpp_lr: float = 1e-3
    lw_opp: float = 1000.0  # TPP's Gram penalty and the constant weight of "X + L1" (the reference's --lw_opp)
    reg_granularity: float = 1e-4
    update_reg_interval: int = 10
    stabilize_iters: int = 10_000  # TPP: iterations at the final penalty (the reference's stabilize_reg_interval)
    zero_out_interval: int = 100
    pre_iters: int = 50_000  # "X + L1": iterations of X before pruning
    pre_scheme: str = "penalty"  # "X + L1": X alone ("penalty") or inside the reference's opp loop ("opp")
    pre_lr: float = 1e-3
    penalty_weight: float = 0.1  # "L1 + X": the reference's --lw_orth_reg
    kernorth_rule: str = "c_in"  # KernOrth+L1's transpose rule: "c_in" (the reference's) or "fan_in" (intended)
    ai_iters: int = 10_000
    jsv_samples: int = 100
    jsv_bn: str = "eval"
    train_limit: int | None = None
    width_scale: float = 1.0
    augment: bool | None = None  # None: on for CIFAR and ImageNet, off otherwise
    workers: int | None = None  # ImageNet only: Grain decoding processes (None: min(16, CPUs))
    image_size: int = 224  # ImageNet only: the training crop and the eval centre crop
    resize: int = 256  # ImageNet only: the eval transform's shorter side before the centre crop
    bf16: bool = False
    checkpoint_every: int | None = 1000
    progress: bool = True
    out: str = "runs/prune"
    shared: str | None = None  # where base/, pre/, plan.json, pruned.npz live (default: out); runs that
    # differ only in retraining (e.g. two learning rates) share them

    def validate(self) -> PruneConfig:
        # imported here: the CLI reads PruneConfig's defaults, and `isotpp --help` stays free of JAX
        from isotpp.models import model_spec
        from isotpp.pruning.groups import parse_ratios
        from isotpp.pruning.methods import get_method
        from isotpp.training.engine import LRSchedule

        model_spec(self.model)
        get_method(self.method)
        parse_ratios(self.ratios)
        LRSchedule.parse(self.lr_schedule)
        LRSchedule.parse(self.base_lr_schedule)
        for name in ("epochs", "base_epochs", "batch_size", "update_reg_interval", "stabilize_iters",
                     "zero_out_interval", "pre_iters", "jsv_samples", "image_size", "resize"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"workers must be at least 0, got {self.workers}")
        if is_imagenet(self.dataset) and self.resize < self.image_size:
            raise UserError(f"resize {self.resize} is smaller than image-size {self.image_size}: the centre crop "
                            "would not fit (use e.g. --image-size 224 --resize 256)")
        if self.pre_scheme not in ("penalty", "opp"):
            raise UserError(f"pre_scheme must be 'penalty' or 'opp', got {self.pre_scheme!r}")
        if self.kernorth_rule not in ("c_in", "fan_in"):
            raise UserError(f"kernorth_rule must be 'c_in' (the reference's) or 'fan_in', got {self.kernorth_rule!r}")
        if self.jsv_bn not in ("eval", "batch"):
            raise UserError(f"jsv-bn must be 'eval' or 'batch', got {self.jsv_bn!r}")
        if self.base is not None and not Path(self.base).exists():
            raise UserError(f"base model {self.base} does not exist: check the path or leave --base out to train one")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------


def is_imagenet(dataset: str) -> bool:
    """Whether ``dataset`` names an ImageFolder tree (``data_dir/{train,val}/<class>/<image>``)."""
    return str(dataset).lower() == "imagenet"
