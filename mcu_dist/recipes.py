"""Named reference recipes: how the original and retrained models are trained, chosen from (dataset, model).

A recipe fixes the reference training (epochs, SGD lr / momentum / weight decay, batch size) and the
training augmentation. ``reference.recipe: auto`` (the default) picks the recipe named for the
experiment's dataset and model in :data:`DEFAULT_FOR`, else ``standard``; a recipe name picks that one.
Every ``reference.*`` field and ``data.augment`` the user sets overrides the recipe's value, and the
resolved recipe (name, values, what was overridden) is printed with a run and logged with a trial.

The recipes:

- ``standard``: the package's generic recipe (digits, user models, anything without a named recipe).
- ``cifar-resnet18`` / ``cifar-vgg16bn``: the field's usual full-size CIFAR recipe (SGD, lr 0.1, momentum
  0.9, cosine, weight decay 5e-4, 182 epochs, crop+flip), inside the ranges MCU_METHOD §8 gives for the
  paper's original and retrained models; sized for GPUs.
- ``cifar-small-cnn``: CPU-sized, for the small CNN (and the CIFAR ResNet-8) on a CIFAR subset (100-500
  images per class): no augmentation and a weight decay low enough that the original memorises its
  training set (>= 95% training accuracy, measured: README "Reference recipes"), so there is something
  to unlearn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mcu_dist.config import ConfigError, ExperimentConfig

FIELDS = ("epochs", "lr", "momentum", "weight_decay", "batch_size")


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    augment: bool | None  # None: the dataset's own default
    overridden: tuple[str, ...] = ()  # the fields the experiment's config set itself

    def training(self) -> dict:
        """The values reference training uses (a cache key's ``recipe`` part)."""
        return {f: getattr(self, f) for f in FIELDS}

    def describe(self) -> str:
        aug = {None: "the dataset's augmentation", True: "crop+flip", False: "no augmentation"}[self.augment]
        text = (
            f"reference recipe {self.name}: {self.epochs} epochs, SGD lr {self.lr:g} (momentum "
            f"{self.momentum:g}, weight decay {self.weight_decay:g}), batch {self.batch_size}, {aug}"
        )
        return text + (f"; overridden: {', '.join(self.overridden)}" if self.overridden else "")


RECIPES: dict[str, Recipe] = {
    "standard": Recipe("standard", 20, 0.05, 0.9, 5e-4, 128, None),
    "cifar-resnet18": Recipe("cifar-resnet18", 182, 0.1, 0.9, 5e-4, 128, True),
    "cifar-vgg16bn": Recipe("cifar-vgg16bn", 182, 0.1, 0.9, 5e-4, 128, True),
    "cifar-small-cnn": Recipe("cifar-small-cnn", 60, 0.05, 0.9, 5e-5, 128, False),
}

DEFAULT_FOR: dict[tuple[str, str], str] = {
    ("cifar10", "resnet18"): "cifar-resnet18",
    ("cifar100", "resnet18"): "cifar-resnet18",
    ("cifar10", "vgg16_bn"): "cifar-vgg16bn",
    ("cifar100", "vgg16_bn"): "cifar-vgg16bn",
    ("cifar10", "small_cnn"): "cifar-small-cnn",
    ("cifar100", "small_cnn"): "cifar-small-cnn",
    ("cifar10", "resnet8"): "cifar-small-cnn",
    ("cifar100", "resnet8"): "cifar-small-cnn",
}


def check_recipe(name: str) -> None:
    if name != "auto" and name not in RECIPES:
        raise ConfigError(f"reference.recipe: got {name!r}; allowed: auto, {', '.join(RECIPES)}")


def resolved_params(cfg: ExperimentConfig) -> dict:
    """``cfg.flat()`` with the reference recipe resolved: ``reference.recipe`` its name, ``reference.*``
    the values training uses (tracking params say what ran)."""
    recipe = resolve(cfg)
    flat = cfg.flat()
    flat.update({f"reference.{k}": v for k, v in recipe.training().items()})
    flat["reference.recipe"] = recipe.name
    return flat


def resolve(cfg: ExperimentConfig) -> Recipe:
    """The recipe ``cfg`` trains its reference models with: the named (or default) one, then every
    ``reference.*`` field and ``data.augment`` the config sets itself."""
    check_recipe(cfg.reference.recipe)
    name = cfg.reference.recipe
    if name == "auto":
        name = DEFAULT_FOR.get((cfg.data.dataset, cfg.model.name), "standard")
    base = RECIPES[name]
    values = {f: getattr(cfg.reference, f) for f in FIELDS if getattr(cfg.reference, f) is not None}
    if cfg.data.augment is not None:
        values["augment"] = cfg.data.augment
    changed = tuple(k for k, v in values.items() if getattr(base, k) != v)
    return dataclasses.replace(base, **values, overridden=changed)
