"""The robustness study's perturbations, each at 5 severities, on uint8 image batches.

They act on the images as stored (before the eval transform), as a scanner or a
different hospital would alter them. Sizes (translation, blur) scale with the image side
so a severity means the same thing at 28 and at 224 pixels. Every function maps
(N, H, W, C) uint8 to the same shape and dtype; severity 0 is the clean image.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation about the centre; corners filled by reflection so no black wedges appear."""
    return _to_uint8(ndimage.rotate(images.astype(np.float32), degrees, axes=(2, 1), reshape=False,
                                    order=1, mode="reflect"))


def translate(images: np.ndarray, fraction: float) -> np.ndarray:
    """Shift right and down by ``fraction`` of the side; the uncovered band is reflected."""
    shift = fraction * images.shape[1]
    return _to_uint8(ndimage.shift(images.astype(np.float32), (0, shift, shift, 0), order=1, mode="reflect"))


def colour_temperature(images: np.ndarray, amount: float) -> np.ndarray:
    """Warmer white balance: red gains ``amount``, blue loses it (RGB only)."""
    gains = np.array([1.0 + amount, 1.0, 1.0 - amount], np.float32)
    return _to_uint8(images.astype(np.float32) * gains)


def gaussian_noise(images: np.ndarray, sigma: float, first: int = 0) -> np.ndarray:
    """Additive N(0, (255 sigma)^2) noise, drawn in float32 for each image from a generator seeded
    by its index in the split (``first`` is images[0]'s), so the noise does not depend on how
    the split is cut into chunks."""
    noise = np.empty(images.shape, np.float32)
    for i in range(len(images)):
        noise[i] = np.random.default_rng((0, first + i)).standard_normal(images.shape[1:], dtype=np.float32)
    return _to_uint8(images.astype(np.float32) + np.float32(255.0 * sigma) * noise)


def blur(images: np.ndarray, fraction: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``fraction`` of the side."""
    sigma = fraction * images.shape[1]
    return _to_uint8(ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0)))


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """Contrast scaled by ``factor`` (< 1 flattens) about each image's mean."""
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8(mean + factor * (x - mean))


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A named perturbation, its parameter at severities 1..5, and the unit of that parameter."""

    name: str
    apply: Callable[[np.ndarray, float], np.ndarray]
    params: tuple[float, ...]
    unit: str
    rgb_only: bool = False
    random: bool = False  # apply takes a third argument, ``first``, that seeds its draw

    def __call__(self, images: np.ndarray, severity: int, first: int = 0) -> np.ndarray:
        """``images`` at ``severity``; ``first`` is the index of images[0] in its split, so that
        a random perturbation draws each image's noise the same however the split is chunked."""
        if severity == 0:
            return images
        if self.random:
            return self.apply(images, self.params[severity - 1], first)
        return self.apply(images, self.params[severity - 1])


PERTURBATIONS = (
    Perturbation("rotation", rotate, (6.0, 12.0, 18.0, 24.0, 30.0), "degrees"),
    Perturbation("translation", translate, (0.04, 0.08, 0.12, 0.16, 0.20), "fraction of side"),
    Perturbation("colour_temperature", colour_temperature, (0.06, 0.12, 0.18, 0.24, 0.30),
                 "red gain / blue loss", rgb_only=True),
    Perturbation("gaussian_noise", gaussian_noise, (0.02, 0.04, 0.06, 0.08, 0.10), "std / 255", random=True),
    Perturbation("blur", blur, (0.02, 0.03, 0.045, 0.06, 0.08), "std, fraction of side"),
    Perturbation("contrast", contrast, (0.8, 0.65, 0.5, 0.35, 0.2), "contrast factor"),
)


def medmnistc_corruptions(flag: str) -> dict[str, Callable[[np.ndarray, int], np.ndarray]] | str:
    """MedMNIST-C's corruptions for dataset ``flag`` as batch functions, or why there are none.

    medmnistc (Di Salvo et al., 2024) is optional: it depends on torch, torchvision, OpenCV
    and ImageMagick. Its corruptions take one PIL image and a severity index 0..4.
    """
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except Exception as err:  # noqa: BLE001 - ImportError, or a missing system library beneath it
        # No install command: medmnistc pins medmnist==3.0.1 and pulls torchvision, which would
        # change the environment the README builds.
        return (f"medmnistc is not installed ({type(err).__name__}); it is optional and kept out of "
                "requirements.txt (it pins medmnist==3.0.1 and needs torchvision), so its corruptions are skipped")
    if flag not in CORRUPTIONS_DS:
        return f"medmnistc has no corruptions for dataset {flag!r}"
    from PIL import Image

    def batch_fn(corruption) -> Callable[[np.ndarray, int], np.ndarray]:
        def apply(images: np.ndarray, severity: int, first: int = 0) -> np.ndarray:
            out = []
            for image in images:
                pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
                result = np.asarray(corruption.apply(pil, severity=severity - 1), np.uint8)
                if result.ndim == 3 and image.shape[-1] == 1:  # some corruptions return RGB for gray input
                    result = result[..., 0]
                out.append(result.reshape(image.shape))
            return np.stack(out)

        return apply

    return {name: batch_fn(corruption) for name, corruption in CORRUPTIONS_DS[flag].items()}
