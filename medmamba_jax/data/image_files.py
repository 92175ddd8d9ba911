"""Reading image files (PNG, JPEG, DICOM) into the uint8 form training read from its dataset.

Training read MedMNIST images at their stored size (``config.size``) with 1 channel
(grayscale sets) or 3 (RGB sets), and image-folder images as RGB resized to
``image_size``; the eval transform then resized to the model's input and repeated a
grayscale channel. ``to_stored`` makes any file look like those stored images, so the
same eval transform gives the model what training gave it. Image folders are decoded
for training by these same functions (``folder_source``), so a 16-bit or RGBA file is
turned into the same pixels there as at prediction time.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from medmamba_jax import extras

# DICOM files have no reliable extension, so they are also recognised by their magic bytes.
_DICOM_MAGIC_OFFSET, _DICOM_MAGIC = 128, b"DICM"


class ImageReadError(ValueError):
    """A file that is not a readable image; ``str(err)`` names the file and the reason."""


def _is_dicom(path: str) -> bool:
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    with open(path, "rb") as f:
        f.seek(_DICOM_MAGIC_OFFSET)
        return f.read(4) == _DICOM_MAGIC


def _window_to_uint8(pixels: np.ndarray, ds) -> np.ndarray:
    """DICOM pixel values -> uint8, through the file's VOI LUT or window when it has a usable
    one, else min-max.

    The VOI transform's whole output range maps to 0..255, as a viewer shows it: tissue
    below a window is black, above it white, and an image whose values fill only part of the
    window stays that shade of grey. Min-max (no VOI transform, or one pydicom cannot apply,
    such as a window of width 0) keeps all contrast.
    """
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(pixels, ds).astype(np.float64)
    voi = _voi(values, ds)
    if voi is None:
        lo, hi = float(values.min()), float(values.max())
    else:
        values, lo, hi = voi
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":  # 0 is white in MONOCHROME1
        scaled = 1.0 - scaled
    return np.round(scaled * 255).astype(np.uint8)


def _voi(values: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """(values through the VOI transform, its output range lo, hi), choosing as pydicom's
    apply_voi_lut does (a VOI LUT before a window); None when the file has no usable one."""
    from pydicom.pixels import apply_voi, apply_windowing

    table = ds.get("VOILUTSequence")
    try:
        if table and table[0].get("LUTDescriptor") is not None and table[0].get("LUTData") is not None:
            entries, first = int(table[0].LUTDescriptor[0]) or 2**16, int(table[0].LUTDescriptor[1])
            outputs = apply_voi(np.arange(first, first + entries), ds)  # the whole table
            lo, hi = float(outputs.min()), float(outputs.max())
            values = apply_voi(np.round(values).astype(np.int64), ds)  # a table is indexed by integers
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            with np.errstate(over="ignore"):  # far below and far above the window: its two output ends
                lo, hi = sorted(apply_windowing(np.array([-1e300, 1e300]), ds).tolist())
            values = apply_windowing(values, ds)
        else:
            return None
    except Exception:  # noqa: BLE001 - pydicom raises many types; an unusable VOI means min-max
        return None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        return None
    return np.asarray(values, np.float64), lo, hi


def _read_dicom(path: str) -> Image.Image:
    pydicom = extras.require("pydicom", "Reading DICOM files", extras.install_command("dicom"))

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad files
        raise ImageReadError(f"{path}: not a readable DICOM image ({type(err).__name__}: {err})") from err
    # The header, not the array's shape, says which axis is frames: (frames, H, W[, samples]).
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:  # a series or cine loop: its middle frame
        pixels = pixels[len(pixels) // 2]
    colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
    if pixels.ndim != 2 + colour or (colour and pixels.shape[-1] not in (3, 4)):
        raise ImageReadError(f"{path}: DICOM pixel data of shape {pixels.shape} is not one 2-D image "
                             f"({getattr(ds, 'NumberOfFrames', 1)} frames, {getattr(ds, 'SamplesPerPixel', 1)} "
                             "samples per pixel)")
    try:
        if colour:  # RGB after pydicom's colour-space conversion, scaled down from its stored bit depth
            return _rgb_to_image(pixels[..., :3], 2 ** int(getattr(ds, "BitsStored", 8) or 8) - 1)
        if getattr(ds, "PhotometricInterpretation", "") == "PALETTE COLOR":  # indices into an RGB table
            from pydicom.pixels import apply_color_lut

            rgb = apply_color_lut(pixels, ds)
            return _rgb_to_image(rgb, np.iinfo(rgb.dtype).max)
        return Image.fromarray(_window_to_uint8(pixels, ds))
    except Exception as err:  # noqa: BLE001 - as above: a header pydicom cannot apply
        raise ImageReadError(f"{path}: DICOM pixel data that cannot be displayed ({type(err).__name__}: {err})") from err


def _rgb_to_image(rgb: np.ndarray, top: int) -> Image.Image:
    """(H, W, 3) integer RGB of range 0..top as an 8-bit PIL image."""
    return Image.fromarray(np.clip(np.round(rgb.astype(np.float64) * (255 / top)), 0, 255).astype(np.uint8))


def read_image(path: str) -> Image.Image:
    """A PIL image of a PNG, JPEG (anything Pillow reads) or DICOM file; ImageReadError otherwise."""
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: {'is a directory, not an image' if os.path.isdir(path) else 'no such file'}")
    if _is_dicom(path):
        return _read_dicom(path)
    with open(path, "rb") as f:
        return decode(f.read(), path)


def decode(encoded: bytes, name: str) -> Image.Image:
    """A PIL image of an encoded PNG or JPEG (anything Pillow reads); ImageReadError naming ``name`` otherwise."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:  # Pillow's own message names only the in-memory buffer
        raise ImageReadError(f"{name}: not a readable image (PNG, JPEG or DICOM)") from None
    except Image.DecompressionBombError as err:  # not an OSError; Pillow's guard against huge files
        raise ImageReadError(f"{name}: {err} (raise PIL.Image.MAX_IMAGE_PIXELS to read it)") from None
    except (OSError, ValueError) as err:  # a known format, broken
        raise ImageReadError(f"{name}: not a readable image (PNG, JPEG or DICOM): {err}") from err


def to_stored(image: Image.Image, channels: int, size: int, upstream: bool = False) -> np.ndarray:
    """(size, size, channels) uint8 like the dataset's stored images.

    RGBA is composited on black (so transparent pixels are black whatever colour they
    hold), 16-bit grayscale is min-max scaled to 8 bits, and grayscale becomes RGB (or RGB
    grayscale) as needed. ``upstream`` decodes as the released PyTorch code's evaluation does,
    with PIL's ``convert("RGB")`` alone (alpha dropped, 16-bit values clipped at 255), for
    weights trained that way.
    """
    if upstream:
        image = image.convert("RGB")
    if image.mode in ("I;16", "I;16B", "I", "F"):  # high bit depth grayscale
        values = np.asarray(image, np.float64)
        lo, hi = values.min(), values.max()
        image = Image.fromarray(np.round((values - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def load_for_model(path: str, channels: int, size: int, upstream: bool = False) -> np.ndarray:
    """``read_image`` then ``to_stored``: (size, size, channels) uint8."""
    return to_stored(read_image(path), channels, size, upstream)


def labelled_folder(root: str) -> dict[str, list[str]]:
    """{class folder name: sorted paths of the files directly inside it} of ``root/<class>/*``.

    Hidden names (``.DS_Store``, ``.ipynb_checkpoints/``) are neither classes nor images;
    the files listed are not opened here, so a non-image among them is found when read.
    """
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise ImageReadError(f"{root}: not a directory (expected {root}/<class>/<image files>)")
    classes = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder) and not name.startswith("."):
            classes[name] = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                                   if not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))
    if not classes:
        raise ImageReadError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    return classes
