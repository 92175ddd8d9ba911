"""Datasets, downloads, the deterministic train stream, transforms, AutoAugment, image folders."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from medmamba_jax import data
from medmamba_jax.data import DataError, medmnist_source
from medmamba_jax.data.autoaugment import autoaugment_batch
from helpers import write_fake_medmnist


def test_load_split_matches_npz_and_info(tiny_config, fake_medmnist_dir):
    images, labels = data.load_split(tiny_config, "val")
    raw = np.load(os.path.join(fake_medmnist_dir, "pathmnist.npz"))
    np.testing.assert_array_equal(images, raw["val_images"])
    np.testing.assert_array_equal(labels, raw["val_labels"][:, 0])
    info = data.dataset_info(tiny_config)
    assert info["task"] == "multi-class" and info["num_classes"] == 9 and info["label_names"][0] == "adipose"


def test_grayscale_and_multilabel(tiny_config):
    tiny_config.dataset = "chestmnist"
    images, labels = data.load_split(tiny_config, "train")
    assert images.shape[1:] == (28, 28, 1) and labels.shape == (len(images), 14)
    x = data.preprocess(images[:3], tiny_config)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grayscale repeated to 3 channels
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert data.dataset_info(tiny_config)["multi_label"]


def test_missing_file_names_file_url_and_command(tiny_config, tmp_path):
    tiny_config.data_dir = str(tmp_path)
    with pytest.raises(DataError) as err:
        data.load_split(tiny_config, "train")
    message = str(err.value)
    assert "pathmnist.npz" in message and "https://zenodo.org" in message
    assert "--config.download=True" in message and "\n" not in message


def test_label_outside_class_list(tmp_path):

    path = write_fake_medmnist(str(tmp_path), "breastmnist")
    arrays = dict(np.load(path))
    arrays["test_labels"][0] = 7
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="outside the 2 classes"):
        medmnist_source.load("breastmnist", 28, str(tmp_path), "test", fetch=False)


@pytest.mark.parametrize("flag, change, message", [
    ("breastmnist", lambda a: {**a, "test_labels": a["test_labels"][:-1]}, "156 images but 155 labels"),
    ("breastmnist", lambda a: {**a, "test_images": a["test_images"] / 255.0}, "float64 images, not uint8"),
    ("pathmnist", lambda a: {**a, "test_labels": a["test_labels"] - 0.7}, "float64 labels, not integers"),
    ("breastmnist", lambda a: {**a, "test_images": a["test_images"][:, :14, :14]}, r"shape \(14, 14, 1\), not \(28, 28, 1 or 3\)"),
    ("pathmnist", lambda a: {**a, "test_images": a["test_images"][..., :2]}, r"shape \(28, 28, 2\), not \(28, 28, 1 or 3\)"),
    ("chestmnist", lambda a: {**a, "test_labels": a["test_labels"][:, :13]}, r"labels of shape \(13,\), not \(14,\)"),
    ("breastmnist", lambda a: a["test_images"], "is not a readable MedMNIST file"),  # a bare array, not an archive
])  # fmt: skip
def test_npz_contents_unlike_the_official_files_are_one_data_error(tmp_path, flag, change, message):

    path = write_fake_medmnist(str(tmp_path), flag, split_sizes={"train": 4, "val": 4, "test": 156})
    changed = change(dict(np.load(path)))
    with open(path, "wb") as f:  # np.savez on a path would add ".npz" to a bare array's file name
        np.savez(f, **changed) if isinstance(changed, dict) else np.save(f, changed)
    with pytest.raises(DataError, match=message):
        medmnist_source.load(flag, 28, str(tmp_path), "test", fetch=False)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_zip"])
def test_a_damaged_npz_is_one_data_error(tmp_path, damage):

    path = write_fake_medmnist(str(tmp_path), "breastmnist")
    content = open(path, "rb").read()
    damaged = {"truncated": content[: len(content) // 2], "empty": b"", "not_a_zip": b"PK\x03\x04" + b"x" * 100}
    open(path, "wb").write(damaged[damage])
    with pytest.raises(DataError, match="is not a readable MedMNIST file .*delete it and download it again"):
        medmnist_source.load("breastmnist", 28, str(tmp_path), "test", fetch=False)


def test_unknown_dataset_and_size(tiny_config):
    tiny_config.dataset = "organmnist3d"
    with pytest.raises(DataError, match="unknown dataset"):
        data.load_split(tiny_config, "train")
    with pytest.raises(DataError, match="size must be one of"):
        medmnist_source.npz_path("/x", "pathmnist", 32)


def test_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch, fake_medmnist_dir):
    source = os.path.join(fake_medmnist_dir, "breastmnist.npz")
    md5 = hashlib.md5(open(source, "rb").read()).hexdigest()
    url = "file://" + source
    target = tmp_path / "data"
    monkeypatch.setattr(medmnist_source, "url_and_md5", lambda flag, size: (url, "0" * 32))
    with pytest.raises(DataError, match="MD5"):
        medmnist_source.download("breastmnist", 28, str(target))
    assert os.listdir(target) == []  # nothing half-written
    monkeypatch.setattr(medmnist_source, "url_and_md5", lambda flag, size: (url, md5))
    path = medmnist_source.download("breastmnist", 28, str(target))
    assert path.endswith("breastmnist.npz") and os.listdir(target) == ["breastmnist.npz"]


def test_download_replaces_a_damaged_file_only_when_its_md5_differs(tmp_path, monkeypatch, fake_medmnist_dir):
    source = os.path.join(fake_medmnist_dir, "breastmnist.npz")
    good = open(source, "rb").read()
    path = tmp_path / "breastmnist.npz"
    path.write_bytes(good[: len(good) // 2])
    damaged_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(medmnist_source, "url_and_md5", lambda flag, size: ("file://" + source, damaged_md5))
    with pytest.raises(DataError, match="not a readable MedMNIST file"):  # the official file itself: no loop
        medmnist_source.load("breastmnist", 28, str(tmp_path), "test", fetch=True)
    good_md5 = hashlib.md5(good).hexdigest()
    monkeypatch.setattr(medmnist_source, "url_and_md5", lambda flag, size: ("file://" + source, good_md5))
    images, labels = medmnist_source.load("breastmnist", 28, str(tmp_path), "test", fetch=True)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["breastmnist.npz"]
    np.testing.assert_array_equal(images[..., 0], np.load(source)["test_images"])


def test_train_stream_is_a_function_of_seed_and_step():
    images = np.arange(20 * 2 * 2 * 1, dtype=np.uint8).reshape(20, 2, 2, 1)
    labels = np.arange(20)
    stream = data.TrainStream(images, labels, 4, seed=3, steps_multiple=2)
    assert stream.steps_per_epoch == 4  # 5 micro-batches cut to whole updates of 2
    again = data.TrainStream(images, labels, 4, seed=3, steps_multiple=2)
    np.testing.assert_array_equal(stream(6)[1], again(6)[1])
    for step in range(8):  # images and labels in the order of the batch's indices
        batch_images, batch_labels = stream(step)
        np.testing.assert_array_equal(batch_images, images[stream.indices(step)])
        np.testing.assert_array_equal(batch_labels, labels[stream.indices(step)])
    other_seed = data.TrainStream(images, labels, 4, seed=4, steps_multiple=2)
    assert not np.array_equal(other_seed.indices(0), stream.indices(0))
    epoch0 = np.concatenate([stream.indices(s) for s in range(4)])
    assert len(set(epoch0)) == 16 and not np.array_equal(stream.indices(0), stream.indices(4))
    halves = [data.TrainStream(images, labels, 4, seed=3, steps_multiple=2, process_index=i, process_count=2)(5)[1] for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), stream(5)[1])


def test_a_finished_train_stream_and_its_images_are_freed():
    import weakref

    images = np.zeros((8, 2, 2, 1), np.uint8)
    stream = data.TrainStream(images, np.arange(8), 4, seed=0)
    stream(0), stream(2)  # two epochs' orders computed
    freed = weakref.ref(images), weakref.ref(stream)
    del stream, images
    assert all(ref() is None for ref in freed)  # by reference counting alone: no cycle, no cache outside


def test_autoaugment_is_deterministic_and_keeps_shape():
    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28, 3), dtype=np.uint8)
    a = autoaugment_batch(images, seed=0, step=5, positions=np.arange(6))
    b = autoaugment_batch(images, seed=0, step=5, positions=np.arange(6))
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and not np.array_equal(a, images)
    gray = autoaugment_batch(images[..., :1], seed=0, step=1, positions=np.arange(6))
    assert gray.shape == (6, 28, 28, 1)


def test_eval_transform_maps_0_and_255_to_minus_1_and_1():
    from medmamba_jax.data.transforms import EvalTransform

    row = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1)
    x = np.asarray(EvalTransform(image_size=3, in_chans=3)(np.repeat(row, 3, axis=1)))
    np.testing.assert_allclose(x[0, 0, :, 0], [-1.0, 51 / 127.5 - 1, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_train_transform_shapes_and_key_dependence(tiny_config):
    import jax

    images = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1), dtype=np.uint8)
    transform = data.train_transform(tiny_config)
    a = transform(images, jax.random.key(0))
    b = transform(images, jax.random.key(1))
    assert a.shape == (4, 32, 32, 3) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, transform(images, jax.random.key(0)))
    # Without the crop, each image is the eval image or its mirror image left to right.
    from medmamba_jax.data.transforms import EvalTransform

    tiny_config.random_resized_crop = False
    flipped = np.asarray(data.train_transform(tiny_config)(images, jax.random.key(2)))
    plain = np.asarray(EvalTransform(32, 3)(images))
    mirrored = [np.allclose(f, p[:, ::-1], atol=1e-6) and not np.allclose(f, p) for f, p in zip(flipped, plain)]
    kept = [np.allclose(f, p, atol=1e-6) for f, p in zip(flipped, plain)]
    assert any(mirrored) and all(m or k for m, k in zip(mirrored, kept)), (mirrored, kept)


def _folder(root, layout):
    for split, classes in layout.items():
        for name, count in classes.items():
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(count):
                Image.fromarray(np.full((10, 12, 3), 30 * i, np.uint8)).save(root / split / name / f"{i}.png")


def test_image_folder_through_tfds(tiny_config, tmp_path):
    _folder(tmp_path, {"train": {"cat": 2, "dog": 3}, "val": {"dog": 1}, "test": {"cat": 1, "dog": 1}})
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    images, labels = data.load_split(tiny_config, "train")
    assert images.shape == (5, 32, 32, 3) and sorted(labels.tolist()) == [0, 0, 1, 1, 1]
    assert data.load_split(tiny_config, "val")[1].tolist() == [1]
    assert data.dataset_info(tiny_config)["label_names"] == ["cat", "dog"]


def test_image_folder_decodes_files_as_predict_does(tiny_config, tmp_path):
    """16-bit, RGBA and JPEG files become the same training pixels as predict's input; a
    broken file is named."""
    from medmamba_jax.data.image_files import load_for_model

    rng = np.random.default_rng(0)
    files = {"deep.png": Image.fromarray(rng.integers(0, 4096, (20, 18)).astype(np.uint16)),
             "alpha.png": Image.fromarray(rng.integers(0, 256, (12, 12, 4)).astype(np.uint8)),
             "photo.jpg": Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8))}
    _folder(tmp_path, {"val": {"cat": 1}, "test": {"cat": 1}})
    for i, (name, image) in enumerate(sorted(files.items())):
        os.makedirs(tmp_path / "train" / f"c{i}")
        image.save(tmp_path / "train" / f"c{i}" / name)
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    images, labels = data.load_split(tiny_config, "train")
    for i, name in enumerate(sorted(files)):
        want = load_for_model(str(tmp_path / "train" / f"c{i}" / name), channels=3, size=32)
        np.testing.assert_array_equal(images[list(labels).index(i)], want, err_msg=name)
    assert images[list(labels).index(sorted(files).index("deep.png"))].max() > 200  # min-max scaled; a >> 8 shift would leave <= 15
    (tmp_path / "train" / "c0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"c0/broken.png: not a readable image \(PNG, JPEG or DICOM\)$"):
        data.load_split(tiny_config, "train")


def test_image_folder_bad_splits(tiny_config, tmp_path):
    _folder(tmp_path, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 0}, "test": {"cow": 1}})
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    with pytest.raises(DataError, match="val has no images"):
        data.load_split(tiny_config, "val")
    with pytest.raises(DataError, match=r"\['cow'\] outside the training classes"):
        data.load_split(tiny_config, "test")


def test_image_folder_hidden_names_and_unread_files(tiny_config, tmp_path, capsys):
    _folder(tmp_path, {"train": {"cat": 2, "dog": 1, ".ipynb_checkpoints": 1}, "test": {"dog": 1}})
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"macOS resource fork")  # hidden: not an image
    os.makedirs(tmp_path / "train" / "dog" / "patient_a")
    for name in ("patient_a/scan.png", "x.bmp", "y.TIF", "notes.csv"):
        Image.new("RGB", (4, 4)).save(tmp_path / "train" / "dog" / name, format="PNG")
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    assert data.dataset_info(tiny_config)["label_names"] == ["cat", "dog"]
    images, labels = data.load_split(tiny_config, "train")
    assert sorted(labels.tolist()) == [0, 0, 1]
    assert ("4 files not read (dog/notes.csv, dog/patient_a/scan.png, dog/x.bmp, ...): only .png, .jpg and .jpeg "
            "files directly inside <class>/ folders are") in capsys.readouterr().err
    data.load_split(tiny_config, "test")
    assert capsys.readouterr().err == ""


def test_a_training_class_without_images_is_an_error(tiny_config, tmp_path):
    _folder(tmp_path, {"train": {"cat": 1, "dog": 0, "eel": 1}})
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "dog" / "only.bmp")
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    with pytest.raises(DataError, match=r"train: the class folders \['dog'\] hold no image to train on"):
        data.load_split(tiny_config, "train")
    # With a trained model's classes (the tools), a split may lack some of them.
    assert data.load_split(tiny_config, "train", ["cat", "dog", "eel"])[1].tolist() in ([0, 2], [2, 0])


def test_a_test_only_folder_is_read_with_a_trained_models_classes(tiny_config, tmp_path):
    _folder(tmp_path, {"test": {"dog": 2}})
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path)
    assert data.load_split(tiny_config, "test", ["cat", "dog"])[1].tolist() == [1, 1]
    with pytest.raises(DataError, match="train has no class folders"):
        data.load_split(tiny_config, "test")


def test_image_folder_missing_root_is_named_before_any_split_loads(tiny_config, tmp_path):
    tiny_config.dataset, tiny_config.data_dir = "folder", str(tmp_path / "nowhere")
    for read in (data.dataset_info, lambda config: data.load_split(config, "train")):
        with pytest.raises(DataError, match=r"is not a directory \(expected .*/train/<class>/\*\.png\)"):
            read(tiny_config)
    tiny_config.data_dir = ""
    with pytest.raises(DataError, match=r"no image-folder root: set --config.data_dir=ROOT"):
        data.dataset_info(tiny_config)
