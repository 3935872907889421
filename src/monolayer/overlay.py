"""Pictures to check in the morning: an image with its mask's outline and its confluence.

The overlay is the image (its percentile stretch, grey) scaled so its longest
side is at most :data:`MAX_SIDE` px, the outline of the mask drawn over it in a
colour that stands out on grey phase contrast (yellow, with a dark edge), and
the confluence written in the top-left corner on a dark box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_SIDE = 1024
OUTLINE = (255, 214, 0)
"""Yellow: visible on any grey level, and distinct for the common forms of colour blindness."""
EDGE = (0, 0, 0)


def overlay_image(gray: np.ndarray, mask: np.ndarray, confluence: float, note: str | None = None) -> np.ndarray:
    """An RGB uint8 picture of ``gray`` (already scaled to [0, 1]) with ``mask``'s outline
    and the confluence, at most :data:`MAX_SIDE` px on its longest side.

    >>> img = overlay_image(np.zeros((40, 60)), np.pad(np.ones((20, 20), bool), 10)[:, :60], 0.17)
    >>> img.shape, img.dtype.name, [int(v) for v in img[29, 20]]
    ((40, 60, 3), 'uint8', [255, 214, 0])
    """
    from PIL import Image
    from scipy import ndimage as ndi

    height, width = gray.shape
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = Image.fromarray((np.clip(np.nan_to_num(gray), 0, 1) * 255).round().astype(np.uint8))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    rgb = np.repeat(np.asarray(base.resize(size, Image.BILINEAR))[..., None], 3, axis=2).copy()
    thickness = max(1, round(max(size) / 512))  # 2 px on a 1024 px picture
    inner = small_mask & ~ndi.binary_erosion(small_mask, iterations=thickness, border_value=0)
    edge = ndi.binary_dilation(inner) & ~inner
    rgb[edge] = EDGE
    rgb[inner] = OUTLINE
    return _label(rgb, f"confluence {100 * confluence:.1f} %" + (f"  {note}" if note else ""))


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(10, min(rgb.shape[:2]) // 18)
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def write_overlay(target: Path, picture: np.ndarray) -> str:
    """Write the overlay PNG atomically; return the file's SHA-256."""
    from PIL import Image

    from monolayer.io.atomic import write_atomic
    from monolayer.io.images import sha256_file

    digest: list[str] = []

    def writer(tmp: Path) -> None:
        Image.fromarray(picture).save(tmp, format="PNG", optimize=False)
        digest.append(sha256_file(tmp))

    write_atomic(target, writer)
    return digest[0]
