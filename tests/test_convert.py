"""Weight conversion: PyTorch -> JAX -> PyTorch, the convert command, and clear failures."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from medmamba_jax import from_torch, to_torch_state_dict
from medmamba_jax.cli import convert
from medmamba_jax.model_files import load_model, save_model
from medmamba_jax.params import CheckpointError, load_torch_state_dict
from helpers import DATA, ROOT, fresh_rng


@pytest.fixture(scope="module")
def state_dict():
    return torch.load(DATA / "tiny.pth", map_location="cpu", weights_only=True)


def test_round_trip_is_exact(state_dict):
    exported = to_torch_state_dict(from_torch(state_dict))
    assert set(exported) == set(state_dict)
    for key, value in state_dict.items():
        assert exported[key].dtype == value.dtype, key
        assert torch.equal(exported[key], value), key


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},  # DataParallel
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
    lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "loss.weight": torch.ones(2)},
                "epoch": 3},  # a Lightning module holding the network as .model
    lambda sd: {"model": {"state_dict": sd}, "model_ema": {"state_dict": {}}},  # wrappers nested either way
    lambda sd: {"model": sd, "best_acc": np.float64(0.9), "epoch": np.int64(3), "val": np.zeros(2)},  # NumPy values
])  # fmt: skip
def test_wrapped_and_prefixed_state_dicts_load(state_dict, wrap, tmp_path):
    torch.save(wrap(state_dict), tmp_path / "wrapped.pth")
    loaded = load_torch_state_dict(tmp_path / "wrapped.pth")
    assert loaded.keys() == state_dict.keys()
    assert all(np.array_equal(loaded[k], v.numpy()) for k, v in state_dict.items())
    assert from_torch(wrap(state_dict)).config.dims == (16, 32, 64, 128)


def test_two_models_under_different_prefixes_are_not_guessed_between(state_dict):
    both = {**{f"student.{k}": v for k, v in state_dict.items()}, **{f"teacher.{k}": v for k, v in state_dict.items()}}
    with pytest.raises(CheckpointError, match=r"several models, under the key prefixes \['student.', 'teacher.'\]"):
        from_torch(both)


def test_pickled_objects_beside_the_weights_are_named(state_dict, tmp_path):
    import argparse

    torch.save({"model": state_dict, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "args.pth")
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(argparse.Namespace\)"):
        load_torch_state_dict(tmp_path / "args.pth")


def test_numpy_values_pickled_by_numpy_1_load(state_dict, tmp_path):
    import zipfile

    torch.save({"model": state_dict, "best_acc": np.float64(0.9), "order": np.arange(3)}, tmp_path / "new.pth")
    with zipfile.ZipFile(tmp_path / "new.pth") as new, zipfile.ZipFile(tmp_path / "old.pth", "w") as old:
        for entry in new.infolist():  # NumPy 1 named its pickling helpers numpy.core.*, NumPy 2 numpy._core.*
            content = new.read(entry)
            old.writestr(entry, content.replace(b"numpy._core.", b"numpy.core.") if entry.filename.endswith(".pkl")
                         else content)
    assert b"numpy.core.multiarray" in zipfile.ZipFile(tmp_path / "old.pth").read("new/data.pkl")
    assert load_torch_state_dict(tmp_path / "old.pth").keys() == state_dict.keys()


def test_a_pickled_model_in_the_pre_1_6_format_asks_for_its_state_dict(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(objects of the pre-1.6 pickle format\)"):
        load_torch_state_dict(tmp_path / "legacy.pth")


def test_a_damaged_archive_is_caught_by_its_crc(tmp_path):
    content = bytearray((DATA / "tiny.pth").read_bytes())
    middle = len(content) // 2
    content[middle] ^= 0xFF  # one flipped byte inside a tensor: torch.load alone reads it as a weight
    (tmp_path / "flipped.pth").write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match=r"corrupt PyTorch checkpoint \(entry .* fails its CRC check\)"):
        load_torch_state_dict(tmp_path / "flipped.pth")


def test_another_network_with_stages_and_blocks_is_named_in_one_line(state_dict):
    swin_like = {k.replace("self_attention", "attn"): v for k, v in state_dict.items()}
    with pytest.raises(CheckpointError, match=r"^not a MedMamba state dict: its blocks have no SS2D") as info:
        from_torch(swin_like)
    assert "\n" not in str(info.value)


def test_every_bad_key_is_reported_at_once(state_dict):
    broken = dict(state_dict)
    del broken["layers.1.blocks.0.ln_1.bias"]
    broken["layers.0.blocks.0.extra.weight"] = torch.zeros(3)
    broken["layers.2.blocks.1.self_attention.Ds"] = torch.zeros(7)
    broken["head.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError) as info:
        from_torch(broken)
    message = str(info.value)
    for key in (
        "layers.1.blocks.0.ln_1.bias",
        "layers.0.blocks.0.extra.weight",
        "layers.2.blocks.1.self_attention.Ds: checkpoint (7,), model wants (256,)",
        "head.bias: checkpoint (4,), model wants (5,)",
    ):
        assert key in message
    assert "1 missing keys" in message and "1 unexpected keys" in message and "2 mis-shaped keys" in message


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"hello, I am a text file", "not a PyTorch checkpoint"),
        (None, "corrupt or truncated"),
    ],
)
def test_unreadable_files_give_one_line(tmp_path, content, expected):
    path = tmp_path / "model.pth"
    path.write_bytes(content if content is not None else (DATA / "tiny.pth").read_bytes()[:300_000])
    with pytest.raises(CheckpointError, match=expected) as info:
        load_torch_state_dict(path)
    assert "\n" not in str(info.value)


def test_a_non_medmamba_state_dict_is_named(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError, match="not a MedMamba state dict"):
        from_torch(path)


def test_missing_torch_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "medmamba-jax\[torch\]"'):
        load_torch_state_dict(DATA / "tiny.pth")


def test_convert_command_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert.main([str(DATA / "tiny.pth"), str(out)]) == 0
    assert "num_classes=5" in capsys.readouterr().out
    golden = np.load(DATA / "tiny.npz")
    x = golden["x_nchw"].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(load_model(out)(x), from_torch(DATA / "tiny.pth")(x))


def test_a_model_saved_on_eight_devices_loads_on_one(tmp_path):
    """Saved with its weights replicated over 8 devices, as a multi-device run holds them; the
    checkpoint's shardings name devices this process does not have."""
    out = str(tmp_path / "eight")
    save = (
        "import jax\n"
        "from flax import nnx\n"
        "from medmamba_jax import from_torch\n"
        "from medmamba_jax.model_files import save_model\n"
        "from medmamba_jax import sharding\n"
        f"model = from_torch({str(DATA / 'tiny.pth')!r})\n"
        "nnx.update(model, sharding.replicate(sharding.make_mesh(), nnx.state(model)))\n"
        "assert len(model.head.kernel.value.sharding.device_set) == 8\n"
        f"save_model({out!r}, model)\n"
    )
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"}
    subprocess.run([sys.executable, "-c", save], env=env, cwd=ROOT, check=True, timeout=300)
    golden = np.load(DATA / "tiny.npz")
    x = golden["x_nchw"].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(load_model(out)(x), from_torch(DATA / "tiny.pth")(x))


def test_convert_command_fails_cleanly(tmp_path, capsys, state_dict):
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    assert convert.main([str(bad), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "out").exists()
    misfit = {k: v for k, v in state_dict.items() if k != "head.weight"}
    misfit["layers.0.blocks.0.extra"] = torch.zeros(2)
    torch.save(misfit, tmp_path / "misfit.pth")
    assert convert.main([str(tmp_path / "misfit.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err  # the command prints the key list, not only its heading
    assert err.startswith("error: state dict does not fit") and "\n  layers.0.blocks.0.extra\n" in err
    assert convert.main([str(DATA / "tiny.pth"), str(bad / "sub")]) == 1  # an output below a file
    assert "is a file, not a directory" in capsys.readouterr().err
    assert convert.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "is a directory but not a train.py workdir" in capsys.readouterr().err


def test_a_pickled_whole_model_asks_for_its_state_dict(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match=r"torch.save\(model\).*save model.state_dict\(\) instead"):
        load_torch_state_dict(tmp_path / "whole.pth")


@pytest.mark.parametrize("depths,dims,d_state,num_classes,in_chans,patch_size", [
    ((1, 2), (8, 16), 4, 0, 1, 4),  # no head: the model returns pooled features
    ((1, 0, 1), (8, 16, 32), 2, 3, 3, 2),  # a stage without blocks keeps its patch merging; 2x2 patches
    ((0, 1, 0), (8, 16, 32), 4, 2, 1, 4),  # the width of the first and last stage come from others
])
def test_architecture_is_inferred_for_other_shapes(depths, dims, d_state, num_classes, in_chans, patch_size):
    from flax import nnx

    from medmamba_jax.models import MedMamba, MedMambaConfig

    source = MedMamba(MedMambaConfig(depths, dims, d_state=d_state, num_classes=num_classes, in_chans=in_chans,
                                     patch_size=patch_size), rngs=nnx.Rngs(3))
    model = from_torch(to_torch_state_dict(source))
    cfg = model.config
    assert (cfg.depths, cfg.dims, cfg.d_state, cfg.num_classes, cfg.in_chans, cfg.patch_size) == (
        depths, dims, d_state, num_classes, in_chans, patch_size)
    side = cfg.min_image_size * 2
    x = fresh_rng().standard_normal((2, side, side, in_chans)).astype(np.float32)
    source.eval()
    np.testing.assert_array_equal(model(x), source(x))


def test_half_precision_state_dicts_load_exactly(state_dict):
    for dtype in (torch.bfloat16, torch.float16):
        halved = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        widened = {k: v.float() if v.is_floating_point() else v for k, v in halved.items()}
        x = fresh_rng().standard_normal((1, 32, 32, 3)).astype(np.float32)
        np.testing.assert_array_equal(from_torch(halved)(x), from_torch(widened)(x))


def test_nonfinite_weights_are_refused_at_conversion_and_load_unless_allowed(state_dict, tmp_path, capsys):
    from medmamba_jax.model_files import NonFiniteWeightsError

    broken = dict(state_dict)
    broken["head.weight"] = state_dict["head.weight"].clone()
    broken["head.weight"][0, 0] = float("nan")
    broken["patch_embed.proj.bias"] = state_dict["patch_embed.proj.bias"] + float("inf")
    torch.save(broken, tmp_path / "nan.pth")
    out = tmp_path / "out"
    assert convert.main([str(tmp_path / "nan.pth"), str(out)]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'nan.pth'}: NaN or inf in 2 tensors: patch_embed.proj.bias, "
                                       "head.weight; such a model gives NaN scores; --allow-nonfinite loads it anyway\n")
    assert not out.exists()
    assert convert.main([str(tmp_path / "nan.pth"), str(out), "--allow-nonfinite"]) == 0
    with pytest.raises(NonFiniteWeightsError, match=r"out: NaN or inf in 2 tensors: head.kernel, patch_embed.proj.bias;"):
        load_model(out)
    assert not np.isfinite(load_model(out, allow_nonfinite=True).head.kernel.value).all()


def test_converted_weights_that_differ_from_their_checksum_are_refused(tmp_path):
    """Another model's state under this config loads cleanly, as a flipped bit in a weight can."""
    model = from_torch(DATA / "tiny.pth")
    save_model(tmp_path / "ours", model)
    model.head.bias.value = model.head.bias.value + 1
    save_model(tmp_path / "other", model)
    shutil.rmtree(tmp_path / "ours" / "state")
    shutil.copytree(tmp_path / "other" / "state", tmp_path / "ours" / "state")
    with pytest.raises(CheckpointError, match=r"ours: its weights differ from the checksum recorded when they were "
                                              r"saved \(weights.sha256\): a damaged or altered file"):
        load_model(tmp_path / "ours")
