"""Offline colour stimulus images for the synthetic datasets.

Two kinds of image, each with a category label:

- photo crops: random square crops (25-90 % of the short side), horizontal flips and colour
  jitter (brightness, contrast, saturation, hue) of the colour photos that ship inside
  scikit-image and scikit-learn; the category is the source photo's name;
- drawn objects: a disc, ellipse, rectangle, star or grating patch of random size, position,
  orientation and colour on a random background (flat, gradient or smooth texture); the
  category is the shape kind.

Nothing is downloaded. The same ``seed`` gives the same images on every machine with the same
library versions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, draw

# Photos are shrunk once to this short side; every crop is then at least 64 px wide.
PHOTO_WORKING_SIZE = 256
PHOTO_PROBABILITY = 0.65
SHAPE_KINDS = ("disc", "ellipse", "rectangle", "star", "grating")


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _sklearn_photo(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


# Only colour photos that are bundled with the installed packages (no pooch downloads).
PHOTO_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage_photo("astronaut"),
    "chelsea": _skimage_photo("chelsea"),
    "coffee": _skimage_photo("coffee"),
    "rocket": _skimage_photo("rocket"),
    "hubble_deep_field": _skimage_photo("hubble_deep_field"),
    "immunohistochemistry": _skimage_photo("immunohistochemistry"),
    "retina": _skimage_photo("retina"),
    "motorcycle": _motorcycle,
    "china": _sklearn_photo(0),
    "flower": _sklearn_photo(1),
}

CATEGORIES = (*PHOTO_SOURCES, *SHAPE_KINDS)


@functools.cache
def _working_photo(name: str) -> np.ndarray:
    """The source photo as uint8 RGB, shrunk so its short side is PHOTO_WORKING_SIZE."""
    photo = np.asarray(PHOTO_SOURCES[name]())[..., :3]
    h, w = photo.shape[:2]
    scale = PHOTO_WORKING_SIZE / min(h, w)
    size = (max(PHOTO_WORKING_SIZE, round(w * scale)), max(PHOTO_WORKING_SIZE, round(h * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def make_stimuli(
    n_images: int, image_size: int = 64, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Generate ``n_images`` distinct colour images.

    Returns (images uint8 [n_images, image_size, image_size, 3], categories: one label per image,
    a photo name from ``PHOTO_SOURCES`` or a shape kind from ``SHAPE_KINDS``).
    """
    if n_images < 1 or image_size < 8:
        raise ValueError(f"need n_images >= 1 and image_size >= 8, got {n_images}, {image_size}")
    rng = np.random.default_rng(seed)
    images = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    categories: list[str] = []
    seen: set[bytes] = set()
    while len(categories) < n_images:
        category, image = _random_image(rng, image_size)
        key = image.tobytes()
        if key in seen:  # identical draws are vanishingly rare, but the contract is "distinct"
            continue
        seen.add(key)
        images[len(categories)] = image
        categories.append(category)
    return images, categories


def _random_image(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    if rng.random() < PHOTO_PROBABILITY:
        name = list(PHOTO_SOURCES)[rng.integers(len(PHOTO_SOURCES))]
        return name, _photo_crop(rng, name, size)
    kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
    return kind, _drawn_object(rng, kind, size)


def _photo_crop(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    photo = _working_photo(name)
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 0.9) * min(h, w))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    crop = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _colour_jitter(rng, crop.astype(np.float64) / 255.0)


def _colour_jitter(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes of a float RGB image in [0, 1]."""
    rgb = rgb * rng.uniform(0.75, 1.25)
    rgb = (rgb - rgb.mean()) * rng.uniform(0.75, 1.25) + rgb.mean()
    hsv = color.rgb2hsv(np.clip(rgb, 0.0, 1.0))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.05, 0.05)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0.0, 1.0)
    return _to_uint8(color.hsv2rgb(hsv))


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _drawn_object(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    canvas = _background(rng, size)
    mask = _shape_mask(rng, kind, size)
    if kind == "grating":
        paint = _grating(rng, size)
    else:
        paint = np.broadcast_to(rng.uniform(0.0, 1.0, 3), canvas.shape)
    canvas[mask] = paint[mask]
    return _to_uint8(canvas)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float RGB [size, size, 3]: a flat colour, a linear gradient, or a smooth random texture."""
    style = rng.integers(3)
    base = rng.uniform(0.0, 1.0, 3)
    if style == 0:
        return np.tile(base, (size, size, 1))
    if style == 1:
        other = rng.uniform(0.0, 1.0, 3)
        angle = rng.uniform(0.0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
        return base + ramp[..., None] * (other - base)
    texture = ndimage.gaussian_filter(
        rng.normal(size=(size, size, 3)), sigma=(size / 12, size / 12, 0)
    )
    texture /= texture.std() + 1e-9
    return np.clip(base + 0.12 * texture, 0.0, 1.0)


def _shape_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    radius = rng.uniform(0.15, 0.4) * size
    centre = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
    if kind in ("disc", "grating"):
        rr, cc = draw.disk(tuple(centre), radius, shape=mask.shape)
    elif kind == "ellipse":
        rr, cc = draw.ellipse(
            centre[0],
            centre[1],
            radius,
            radius * rng.uniform(0.3, 0.7),
            shape=mask.shape,
            rotation=rng.uniform(0.0, np.pi),
        )
    elif kind == "rectangle":
        corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * [1.0, rng.uniform(0.3, 1.0)]
        rr, cc = _rotated_polygon(corners * radius, centre, rng.uniform(0.0, np.pi), mask.shape)
    else:  # star
        n_points = int(rng.integers(5, 9))
        angles = np.arange(2 * n_points) * np.pi / n_points
        radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
        points = np.stack([np.sin(angles), np.cos(angles)], axis=1) * radii[:, None]
        rr, cc = _rotated_polygon(points * radius, centre, rng.uniform(0.0, np.pi), mask.shape)
    mask[rr, cc] = True
    return mask


def _rotated_polygon(
    points: np.ndarray, centre: np.ndarray, angle: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = points @ rotation.T + centre
    return draw.polygon(rotated[:, 0], rotated[:, 1], shape=shape)


def _grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sinusoidal two-colour grating filling the whole canvas (masked by the caller)."""
    cycles = rng.uniform(2.0, 8.0)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(
        2 * np.pi * cycles * (np.cos(angle) * xx + np.sin(angle) * yy) + phase
    )
    first, second = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    return first + wave[..., None] * (second - first)
