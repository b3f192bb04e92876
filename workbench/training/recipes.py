"""Fine-tuning recipes: which layers learn, how fast, in which stages.

A recipe is data: a list of stages, each with learning-rate rules (Caffe ``lr_mult`` by layer-name
pattern, first match wins) and a share of the epochs. A new stage starts a fresh optimizer, as
fastai's ``fine_tune`` does when it unfreezes the backbone.

========================  ================================================================
``feature_extraction``    backbone frozen (multiplier 0), only the new head learns: the
                          off-the-shelf features approach
``two_stage``             head only first, then everything with discriminative rates
                          (earlier backbone thirds slower), like fastai's ``fine_tune``
``caffe``                 whole network at ``base_lr``, new head at ``lr_mult`` 10, as in
                          Caffe's flickr-style example
``scratch``               same architecture, random initialisation, batch norm training:
                          the baseline every transfer result is measured against
========================  ================================================================
"""

from __future__ import annotations

import dataclasses

from workbench._checks import UsageError, check_choice, check_int

HEAD = "head*"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training.

    Attributes:
        name: shown in the history and the progress lines.
        share: this stage's share of the epochs (the last stage takes the remainder).
        rules: ``{layer-name pattern: multiplier}``, first match wins.
        default: multiplier of layers no rule matches.
        backbone_thirds: if set, multipliers for the first, middle and last thirds of the
            backbone's weighted layers, applied after ``rules`` (discriminative learning rates).
    """

    name: str
    share: float
    rules: dict
    default: float
    backbone_thirds: tuple[float, float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named way of training.

    Attributes:
        name: one of ``RECIPES``.
        stages: the stages in order.
        pretrained: whether the backbone starts from the pretrained weights.
        train_bn: whether batch norm updates its statistics (inference mode otherwise).
        summary: what it does, in a few words (the command line's help).
    """

    name: str
    stages: tuple[Stage, ...]
    pretrained: bool = True
    train_bn: bool = False
    summary: str = ""

    def stage_epochs(self, total_epochs: int) -> list[int]:
        """Epochs of each stage; each stage gets at least one, the last takes the remainder."""
        if check_int("total_epochs", total_epochs, minimum=1) < len(self.stages):
            raise UsageError(f"epochs must be >= {len(self.stages)} for recipe {self.name!r}, "
                             f"which trains {len(self.stages)} stages of at least one epoch "
                             f"each, received: {total_epochs}")
        counts = [max(1, round(stage.share * total_epochs)) for stage in self.stages[:-1]]
        counts = [min(count, total_epochs - sum(counts[:i]) - (len(self.stages) - 1 - i))
                  for i, count in enumerate(counts)]
        return counts + [total_epochs - sum(counts)]


RECIPES = {
    "feature_extraction": Recipe("feature_extraction", (
        Stage("head", 1.0, {HEAD: 1.0}, default=0.0),),
        summary="the backbone frozen, only the new head learns (fast; few images)"),
    "two_stage": Recipe("two_stage", (
        Stage("head", 0.3, {HEAD: 1.0}, default=0.0),
        Stage("all", 0.7, {HEAD: 1.0}, default=1.0, backbone_thirds=(0.01, 0.1, 0.3))),
        summary="the new head first (30% of the epochs), then every layer, earlier ones "
                "slower"),
    "caffe": Recipe("caffe", (
        Stage("all", 1.0, {HEAD: 10.0}, default=1.0),),
        summary="every layer at the base rate, the new head 10x faster"),
    "scratch": Recipe("scratch", (
        Stage("all", 1.0, {}, default=1.0),), pretrained=False, train_bn=True,
        summary="random initial weights, the baseline that transfer is measured against"),
}


def get_recipe(name: str) -> Recipe:
    """Returns the recipe called ``name`` (one of ``RECIPES``)."""
    return RECIPES[check_choice("recipe", name, RECIPES)]
