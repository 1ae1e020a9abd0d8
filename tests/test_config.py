"""mriscan.config: one default per setting, validation at construction, dotted overrides."""

from __future__ import annotations

import dataclasses

import pytest

from mriscan.config import (
    PRETRAIN_KEY_PARTS,
    CVConfig,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    override,
)
from mriscan.errors import ConfigError


def test_override_replaces_nested_settings_and_validates():
    cfg = override(TrainConfig(), {"fit.epochs": 3, "model.filters": [8, 8, 16, 16], "seed": 4})
    assert (cfg.fit.epochs, cfg.model.filters, cfg.seed) == (3, (8, 8, 16, 16), 4)
    assert TrainConfig().fit.epochs == 45  # the default is untouched (frozen)
    with pytest.raises(ConfigError, match=r"no setting 'fit\.epoch'"):
        override(TrainConfig(), {"fit.epoch": 3})
    with pytest.raises(ConfigError, match="no setting 'nope'"):
        override(TrainConfig(), {"nope": 1})
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        override(TrainConfig(), {"fit.epochs": 0})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("optimizer.learning_rate", float("nan"), "learning_rate must be a finite"),
        ("optimizer.learning_rate", float("inf"), "learning_rate must be a finite"),
        ("optimizer.learning_rate", -1.0, "learning_rate must be a finite"),
        ("pretrain.phantoms", 5, "at least 20 phantoms"),
        ("fit.select", "first", "select must be one of"),
        ("fit.threshold_rule", "otsu", "threshold_rule must be one of"),
        ("split.val_fraction", 0.0, r"val_fraction must be in \(0, 1\): a validation part"),
        ("runtime.pipeline", "dali", "pipeline must be one of"),
        ("model.filters", (8, 8), "filters must be 4 positive integers"),
        ("image_size", 0, "image_size must be a positive integer"),
        ("split.val_fraction", 1.0, r"val_fraction must be in \(0, 1\). Received: 1.0"),
        ("split.test_fraction", -0.1, r"test_fraction must be in \[0, 1\). Received: -0.1"),
    ],
)
def test_invalid_values_name_the_setting(path, value, message):
    with pytest.raises(ConfigError, match=message):
        override(TrainConfig(), {path: value})


def test_cv_needs_an_inner_validation_share():
    with pytest.raises(ConfigError, match="val_fraction must be in"):
        CVConfig(train=override(TrainConfig(), {"split.val_fraction": 0.0}))
    with pytest.raises(ConfigError, match="folds must be >= 2"):
        CVConfig(folds=1)


def test_cv_checks_only_the_validation_share_it_uses():
    """NP8: cv holds out no test share (the test fold is): a valid cv val_fraction beside a
    test_fraction whose sum with it is 1 or more is cv's to accept, and train's to refuse."""
    from mriscan.training.workflow import train

    long_test = override(TrainConfig(), {"split.test_fraction": 0.6})
    cv = override(CVConfig(train=long_test), {"train.split.val_fraction": 0.45})
    assert cv.train.split.val_fraction == 0.45
    with pytest.raises(ConfigError, match="must have a sum below 1") as err:
        train("no/such/data", cv.train, out="no/such/out")
    assert "0.45, 0.6" in str(err.value)
    with pytest.raises(ConfigError, match=r"in \(0, 0.5\) for cv. Received: 0.5") as err:
        override(cv, {"train.split.val_fraction": 0.5})
    assert "test_fraction" not in str(err.value)


def test_dict_round_trip():
    cfg = override(TrainConfig(), {"model.filters": (4, 4, 8, 8), "fit.patience": 3})
    assert config_from_dict(TrainConfig, cfg.to_dict()) == cfg
    cv = CVConfig(folds=3, train=cfg)
    assert config_from_dict(CVConfig, cv.to_dict()) == cv
    with pytest.raises(ConfigError, match="Unknown TrainConfig settings"):
        config_from_dict(TrainConfig, {**cfg.to_dict(), "epochs": 3})


def test_pretrain_key_parts_are_whole_sub_configs_that_shape_the_weights():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PRETRAIN_KEY_PARTS) <= names
    # what only changes fine-tuning, data reading or reporting is not part of the key
    assert not {"fit", "runtime", "split", "image_size"} & set(PRETRAIN_KEY_PARTS)


def test_build_model_default_is_the_trained_network():
    pytest.importorskip("keras")
    from mriscan.model import build_model

    default = build_model(32)
    trained = build_model(32, TrainConfig().model)
    assert [la.get_config() for la in default.layers] == [la.get_config() for la in trained.layers]
    assert default.get_layer("block1_conv1").filters == ModelConfig().filters[0]
    assert "mirror_diff" in {la.name for la in default.layers}


def test_sizes_are_bounded():
    from mriscan.preprocess import PreprocessConfig

    with pytest.raises(ConfigError, match=r"image_size must be in \[16, 2048\]"):
        override(TrainConfig(), {"image_size": 8})
    with pytest.raises(ConfigError, match="size must be at most 4096"):
        PreprocessConfig(size=100_000)


def test_convs_per_block_is_bounded_so_a_typo_cannot_build_for_hours():
    from mriscan.config import MAX_CONVS_PER_BLOCK, ModelConfig

    assert ModelConfig(convs_per_block=MAX_CONVS_PER_BLOCK).convs_per_block == MAX_CONVS_PER_BLOCK
    for bad in (0, -1, MAX_CONVS_PER_BLOCK + 1, 10**20):
        with pytest.raises(ConfigError, match="convs_per_block"):
            ModelConfig(convs_per_block=bad)
