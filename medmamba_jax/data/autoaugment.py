"""AutoAugment's ImageNet policy (Cubuk et al., CVPR 2019, Table 9 in the appendix), on the host.

Used for the paper's MedMamba-X variant. It runs per image with PIL at the source
resolution, before the batch goes to the device; the randomness of image i of micro-step
s comes from ``numpy.random.default_rng((seed, s, i))``, so it is reproducible on resume
and independent of how many hosts share the batch.

Each sub-policy is two (operation, probability, magnitude bin) triples; bins run 0..9.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

NUM_BINS = 10

POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
    (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
)


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def _enhance(kind):
    def op(img, b, rng):
        return kind(img).enhance(1.0 + _signed(0.9 * b / (NUM_BINS - 1), rng))

    return op


def _rotate(img, b, rng):
    return img.rotate(_signed(30.0 * b / (NUM_BINS - 1), rng), resample=Image.NEAREST, fillcolor=0)


def _shear_x(img, b, rng):
    shear = _signed(0.3 * b / (NUM_BINS - 1), rng)
    return img.transform(img.size, Image.AFFINE, (1.0, shear, 0.0, 0.0, 1.0, 0.0), Image.NEAREST, fillcolor=0)


def _posterize(img, b, rng):
    return ImageOps.posterize(img, int(8 - round(b / ((NUM_BINS - 1) / 4))))


def _solarize(img, b, rng):
    return ImageOps.solarize(img, 255.0 * (1 - b / (NUM_BINS - 1)))


OPS = {
    "AutoContrast": lambda img, b, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, b, rng: ImageOps.equalize(img),
    "Invert": lambda img, b, rng: ImageOps.invert(img),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "Rotate": _rotate,
    "ShearX": _shear_x,
    "Posterize": _posterize,
    "Solarize": _solarize,
}


def autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random sub-policy applied to a uint8 (H, W, C) image, C in {1, 3}; same shape out."""
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    for name, probability, magnitude_bin in POLICY[rng.integers(len(POLICY))]:
        if rng.random() < probability:
            img = OPS[name](img, magnitude_bin, rng)
    return np.asarray(img, np.uint8).reshape(image.shape)


def autoaugment_batch(images: np.ndarray, seed: int, step: int, positions: np.ndarray) -> np.ndarray:
    """AutoAugment of every image; ``positions`` are the images' places in the global batch."""
    return np.stack(
        [autoaugment(img, np.random.default_rng((seed, step, int(p)))) for img, p in zip(images, positions)]
    )
