"""The training recipes say what the paper says; workdirs from before a new key keep their settings;
the resize methods; the Table 7 block variants."""

import dataclasses
import importlib
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from medmamba_jax import paper
from medmamba_jax.data.transforms import EvalTransform, eval_transform, nearest_indices
from medmamba_jax.models import MedMamba, MedMambaConfig, SSConvSSM, channel_shuffle, count_params
from medmamba_jax.training import config as config_lib
from medmamba_jax.training.errors import ConfigError
from helpers import DATA

NO_AUGMENTATION = {"random_resized_crop": False, "random_flip": False, "autoaugment": False}
MEDMNIST = {  # recipes.md: MedMNIST v2's settings, as the paper states them
    "size": 28, "image_size": 224, "resize": "nearest", **NO_AUGMENTATION, "batch_size": 128, "num_epochs": 100,
    "learning_rate": 1e-3, "weight_decay": 1e-4, "lr_milestones": (50, 75), "lr_gamma": 0.1, "best_metric": "auc",
    "early_stopping_patience": 0, "model": "medmamba_t", "block": "full",
}
RECIPES = {
    "medmnist": MEDMNIST,
    "medmnist_x": {**MEDMNIST, "autoaugment": True},
    "folder": {  # recipes.md: AdamW lr 1e-4, wd 1e-4, 150 epochs, batch 64, early stopping, no augmentation
        "dataset": "folder", "image_size": 224, **NO_AUGMENTATION, "batch_size": 64, "num_epochs": 150,
        "learning_rate": 1e-4, "weight_decay": 1e-4, "lr_milestones": (), "best_metric": "accuracy",
        "early_stopping_patience": 20, "model": "medmamba_t", "block": "full",
    },
    "upstream_train": {  # the released train.py: crop, flip, Adam lr 1e-4, batch 32, 100 epochs, best accuracy
        "dataset": "folder", "image_size": 224, "resize": "linear", "random_resized_crop": True,
        "random_flip": True, "autoaugment": False, "batch_size": 32, "num_epochs": 100, "learning_rate": 1e-4,
        "weight_decay": 0.0, "lr_milestones": (), "best_metric": "accuracy", "early_stopping_patience": 0,
    },
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_resolves_to_the_stated_settings(name):
    config = importlib.import_module(f"medmamba_jax.configs.{name}").get_config()
    config_lib.validate(config)
    assert {key: config[key] for key in RECIPES[name]} == RECIPES[name]
    shim = importlib.import_module(f"configs.{name}").get_config()  # train.py --config=configs/NAME.py
    assert shim.to_dict() == config.to_dict()


def test_a_workdir_from_before_the_resize_and_block_keys_resumes_with_its_own_settings():
    with open(DATA / "medmnist_config_before_resize_and_block.json") as f:  # as configs/medmnist.py wrote it then
        saved = config_lib.from_dict(json.load(f))
    assert (saved.resize, saved.block, saved.random_resized_crop, saved.random_flip) == ("linear", "full", True, True)
    assert config_lib.run_changes(saved, config_lib.from_dict(saved.to_dict())) == {}
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), np.uint8)
    np.testing.assert_array_equal(eval_transform(saved)(images), EvalTransform(224, 3, "linear")(images))
    # Today's recipe differs from what that run trained with, so resuming it with the recipe is refused.
    today = importlib.import_module("medmamba_jax.configs.medmnist").get_config()
    today.data_dir = saved.data_dir
    assert set(config_lib.run_changes(saved, today)) == {"random_flip", "random_resized_crop", "resize"}


@pytest.mark.parametrize("key,value,message", [
    ("resize", "bicubic", r"resize must be one of \('linear', 'nearest'\), got 'bicubic'"),
    ("block", "no_ssm", r"block must be one of \('full', 'split_no_shuffle', 'no_split', 'ssm_only'\)"),
])
def test_bad_resize_or_block_is_one_line(key, value, message):
    config = config_lib.default_config()
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(config)


@pytest.mark.parametrize("source", [28, 64, 128, 300])
def test_nearest_resize_picks_the_pixels_pil_picks(source):
    """MedMNIST v2 resizes PIL images with Resize((224, 224), NEAREST); 64 -> 224 and 128 -> 224
    have output pixel centres on pixel boundaries, where PIL's rounding must be followed."""
    image = np.random.default_rng(source).integers(0, 256, (source, source, 3), np.uint8)
    pil = np.asarray(Image.fromarray(image).resize((224, 224), Image.NEAREST))
    ours = np.asarray(EvalTransform(224, 3, "nearest")(image[None]))[0]
    np.testing.assert_allclose(ours, pil / 127.5 - 1.0, atol=1e-6)
    assert list(nearest_indices(28, 224)[:17]) == [0] * 8 + [1] * 8 + [2]  # an 8x upscale repeats pixels


# Table 7's parameter counts: at PathMNIST's 9 classes, each rounds to the paper's value.
@pytest.mark.parametrize("row", paper.table("table7_ablation")[4:8], ids=lambda row: "".join(
    row[k] for k in ("ssm", "conv", "split", "shuffle")))
def test_block_variants_have_table7_parameter_counts(row):
    from medmamba_jax.models import BLOCK_PARTS

    parts = tuple(int(row[k]) for k in ("ssm", "conv", "split", "shuffle"))
    block = next(name for name, kept in BLOCK_PARTS.items() if kept == parts)
    model = MedMamba.abstract(MedMambaConfig.medmamba_t(num_classes=9, block=block))
    assert round(count_params(model) / 1e6, 1) == float(row["params_M"]), block


def test_split_without_shuffle_is_the_full_block_before_its_shuffle():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    full, unshuffled = (SSConvSSM(16, block=block, scan_impl="reference", rngs=nnx.Rngs(3))  # eager: the fastest
                        for block in ("full", "split_no_shuffle"))
    for block in (full, unshuffled):
        block.eval()
    np.testing.assert_allclose(full(x) - x, channel_shuffle(unshuffled(x) - x, 2), atol=1e-6)


@pytest.mark.parametrize("block", ["no_split", "ssm_only"])
def test_unsplit_blocks_run_their_branches_on_every_channel(block):
    layer = SSConvSSM(16, block=block, scan_impl="reference", rngs=nnx.Rngs(0))
    assert layer.self_attention.d_model == 16 and (layer.conv_branch is None) == (block == "ssm_only")
    layer.eval()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    expected = x + layer.self_attention(layer.ln_1(x))
    if layer.conv_branch is not None:
        expected = expected + layer.conv_branch(x)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_the_block_key_reaches_the_model():
    from medmamba_jax.training import model_init

    config = config_lib.default_config()
    config.depths, config.dims, config.block = (1, 1), (8, 16), "ssm_only"
    config_lib.validate(config)
    model = MedMamba(config_lib.model_config(config, num_classes=3), rngs=model_init.init_rngs(config))
    assert model.config.block == "ssm_only" and model.layers[0].blocks[0].conv_branch is None


def test_analysis_commands_resize_as_the_workdir_trained():
    from medmamba_jax.inference.loaded_model import Loaded

    model = MedMamba.abstract(MedMambaConfig((1,), (8,), num_classes=2))
    config = importlib.import_module("medmamba_jax.configs.medmnist").get_config()
    assert Loaded(model, ["a", "b"], "multi-class", 224, 1, 28, config).transform == EvalTransform(224, 3, "nearest")
    assert Loaded(model, ["a", "b"], "multi-class", 224, 3, 224).transform == EvalTransform(224, 3, "linear")


def test_init_from_refuses_weights_of_another_block():
    from medmamba_jax.params import from_torch
    from medmamba_jax.training import model_init
    from medmamba_jax.training.errors import TrainingError

    released = from_torch(DATA / "tiny.pth").config  # the full block, as every released checkpoint
    model = MedMamba(dataclasses.replace(released, block="split_no_shuffle"), rngs=nnx.Rngs(0))  # same shapes
    with pytest.raises(TrainingError, match=r"another architecture: block full \(config wants split_no_shuffle\)"):
        model_init.initialise_from(model, str(DATA / "tiny.pth"))
