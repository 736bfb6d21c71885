"""Reference recipes: chosen from (dataset, model), overridden field by field, used by training and cache."""

from __future__ import annotations

import pytest
import torch

from mcu_dist.config import ConfigError, ExperimentConfig, with_overrides
from mcu_dist.evaluate.metrics import training_accuracy
from mcu_dist.recipes import RECIPES, resolve
from mcu_dist.validation import validate
from tests.conftest import digits_config


def _cfg(**dotted) -> ExperimentConfig:
    return with_overrides(ExperimentConfig(), dotted)


@pytest.mark.parametrize(
    "dataset, model, name",
    [
        ("digits", "small_cnn", "standard"),
        ("cifar10", "small_cnn", "cifar-small-cnn"),
        ("cifar10", "resnet8", "cifar-small-cnn"),
        ("cifar100", "resnet18", "cifar-resnet18"),
        ("cifar10", "vgg16_bn", "cifar-vgg16bn"),
        ("cifar10", "tests.fault_models:dies_in_trial", "standard"),  # a user's model: the generic recipe
    ],
)
def test_auto_picks_the_recipe_named_for_the_dataset_and_model(dataset, model, name):
    recipe = resolve(_cfg(**{"data.dataset": dataset, "model.name": model}))
    assert recipe.name == name and recipe.overridden == ()
    assert recipe.training() == RECIPES[name].training()


def test_each_field_the_config_sets_overrides_the_recipe_and_is_named():
    cfg = _cfg(**{"data.dataset": "cifar10", "reference.epochs": 7, "data.augment": True})
    recipe = resolve(cfg)
    assert recipe.name == "cifar-small-cnn" and recipe.epochs == 7 and recipe.augment is True
    assert recipe.lr == RECIPES["cifar-small-cnn"].lr
    assert recipe.overridden == ("epochs", "augment")
    assert "overridden: epochs, augment" in recipe.describe()
    # a recipe by name, whatever the dataset
    assert resolve(_cfg(**{"reference.recipe": "cifar-resnet18"})).epochs == 182


def test_an_unknown_recipe_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"reference\.recipe: got 'paper'; allowed: auto, standard"):
        validate(_cfg(**{"reference.recipe": "paper"}))
    with pytest.raises(ConfigError, match=r"reference\.epochs: got 0; allowed: an integer >= 1"):
        validate(_cfg(**{"reference.epochs": 0}))


def test_tracking_params_show_the_resolved_recipe():
    from mcu_dist.trial import trial_params

    flat = trial_params(_cfg(**{"data.dataset": "cifar10", "reference.lr": 0.2}), {})
    assert flat["reference.recipe"] == "cifar-small-cnn"
    assert flat["reference.epochs"] == RECIPES["cifar-small-cnn"].epochs and flat["reference.lr"] == 0.2
    assert None not in [v for k, v in flat.items() if k.startswith("reference.")]


def test_training_and_the_cache_follow_the_recipe(tmp_path):
    from mcu_dist.lab import Lab

    fast = Lab.build(digits_config(tmp_path, **{"reference.epochs": 1}))
    assert fast.recipe.epochs == 1 and fast.bundle.augment is False  # digits: no augmentation by default
    other = Lab.build(digits_config(tmp_path, **{"reference.epochs": 1, "reference.weight_decay": 0.0}))
    assert fast.reference_key()["recipe"]["weight_decay"] == RECIPES["standard"].weight_decay
    assert fast.reference_key() != other.reference_key()  # another recipe: another cached original
    augmented = Lab.build(digits_config(tmp_path, **{"reference.recipe": "cifar-resnet18"}))
    assert augmented.bundle.augment is True and augmented.recipe.epochs == 8  # digits_config sets 8


def test_training_accuracy_is_the_accuracy_on_all_of_d(digits_lab, digits_original):
    from mcu_dist.evaluate.point import evaluate_outcomes

    row, outcomes = evaluate_outcomes(digits_original, digits_lab)
    correct = torch.cat([outcomes.retain, outcomes.forget]).double().mean().item() * 100
    s = digits_lab.splits
    assert training_accuracy(row, len(s.forget), len(s.retain)) == pytest.approx(correct)
