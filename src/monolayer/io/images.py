"""Reading microscopy images and turning them into normalised grayscale arrays.

Supported: TIFF (8/16/32-bit, float, grayscale, RGB(A), multi-page: one page is
read, the first unless asked), PNG and JPEG. Anything unreadable raises
:class:`~monolayer.errors.DataError` with the reason, so a batch can record it and
move on.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monolayer.errors import DataError, NoInputError, UsageError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

# Refuse images above this many pixels before decoding them: a forged header can
# otherwise ask for terabytes (a "decompression bomb"). 2**28 px is a 16k x 16k
# tile, larger than any single microscope field of view.
MAX_PIXELS = 2**28

# Percentiles for robust intensity normalisation: phase-contrast halos saturate a
# few pixels at the top of the range and dust or walls sit at the bottom, so the
# extreme values say nothing about the cells.
NORM_LOW_PERCENTILE = 0.5
NORM_HIGH_PERCENTILE = 99.5

# Pillow modes whose array is the image as it should be read; any other mode
# (CMYK, YCbCr, HSV, LAB, RGBX, La, PA, ...) is converted to Pillow's luminance,
# "P" to its palette colours, "I;16*" to uint16.
PILLOW_MODES_AS_STORED = frozenset({"1", "L", "LA", "I", "F", "RGB", "RGBA"})
# TIFF photometric interpretations whose samples need no colour conversion: MINISWHITE,
# MINISBLACK, RGB, PALETTE, MASK. Read as an image, MINISWHITE is inverted and PALETTE's
# indices become their colour map's colours; read as stored (a mask), both stay as written:
# a palette mask's indices are its labels.
TIFF_PHOTOMETRIC_AS_STORED = frozenset({0, 1, 2, 3, 4})
TIFF_PHOTOMETRIC_INVERTED, TIFF_PHOTOMETRIC_PALETTE = 0, 3

# Integers up to 2**24 are exact in float32. Wider integers and doubles whose offset is
# over 2**8 times their spread lose the picture in the float32 cast (int64 + 2**40 becomes
# flat, float64 + 1e12 is quantised to steps of 65536), so their offset is removed first.
FLOAT32_EXACT_INTEGERS = 2**24
OFFSET_OVER_SPREAD = 2.0**8

# Float pixels whose magnitude lies outside [2**-64, 2**64] are scaled by a power
# of two before the float32 cast: float32 ends at 3.4e38 (1e300 becomes inf) and
# loses every digit near 1e-38 (1e-300 becomes 0).
FLOAT_COMFORT = (2.0**-64, 2.0**64)


def require_regular_file(path: Path) -> None:
    """Refuse a device, FIFO or socket before anything reads it: ``/dev/zero`` never
    ends and a FIFO blocks until someone writes to it. Missing files pass (the caller
    reports them in its own words)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise DataError(f"{path}: not a regular file (a device, FIFO or socket)",
                        "give an image file")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies image content independent of its name)."""
    require_regular_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    pixels = int(np.prod([int(s) for s in shape[:2]], dtype=np.int64)) if len(shape) >= 2 else 0
    if pixels > MAX_PIXELS:
        raise DataError(f"{path}: image of {shape[1]}x{shape[0]} px is larger than the "
                        f"{MAX_PIXELS} px limit", "is the header corrupt?")


def _first_ifd(data: bytes) -> dict[int, int] | None:
    """Width, height, samples per pixel... of a classic TIFF's first image, read from its
    first IFD without decoding anything (None for BigTIFF or an unexpected layout)."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None or len(data) < 8:
        return None
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    end = offset + 2 + 12 * count
    if end > len(data):
        return None
    tags: dict[int, int] = {}
    for start in range(offset + 2, end, 12):
        tag, kind, n = struct.unpack(order + "HHI", data[start:start + 8])
        if tag in (256, 257, 277) and tag in tags:
            return None  # a repeated size tag: let tifffile judge the file
        if n != 1:
            continue
        if kind == 3:  # SHORT
            tags[tag] = struct.unpack(order + "H", data[start + 8:start + 10])[0]
        elif kind == 4:  # LONG
            tags[tag] = struct.unpack(order + "I", data[start + 8:start + 12])[0]
    return tags


def _read_tiff_fast(data: bytes, name: Path, *, as_stored: bool = False) -> np.ndarray | None:
    """The first page of a plain one-channel TIFF, decoded by libtiff (imagecodecs).

    Several times faster than tifffile's reader for small files (masks), which
    matters when ``evaluate`` reads two masks per record over 100,000 records. The
    size check runs on the header first, so a decompression bomb is refused before
    anything is decoded. Anything unusual returns None and takes tifffile's path.
    """
    tags = _first_ifd(data)
    if not tags or 256 not in tags or 257 not in tags or tags.get(277, 1) != 1:
        return None
    if tags.get(262, 1) not in TIFF_PHOTOMETRIC_AS_STORED:
        return None  # a one-ink separation and such: tifffile's path judges the colour model
    if not as_stored and tags.get(262, 1) in (TIFF_PHOTOMETRIC_INVERTED, TIFF_PHOTOMETRIC_PALETTE):
        return None  # an image to invert or colour: tifffile's path has the page's colour map
    _check_size(name, (tags[257], tags[256]))
    try:
        import imagecodecs

        array = imagecodecs.tiff_decode(data)
    except Exception:
        return None
    if array.shape != (tags[257], tags[256]):
        return None
    return array


def _read_tiff(source: io.BytesIO, name: Path, page: int, *, as_stored: bool = False) -> np.ndarray:
    import tifffile

    if page == 0:
        fast = _read_tiff_fast(source.getvalue(), name, as_stored=as_stored)
        if fast is not None:
            return fast

    with tifffile.TiffFile(source) as tif:
        pages = tif.pages
        if len(pages) == 0:
            raise DataError(f"{name}: TIFF holds no image")
        if page >= len(pages):
            raise DataError(f"{name}: has {len(pages)} page(s), page {page} asked for",
                            f"use --page 0..{len(pages) - 1}")
        tiff_page = pages[page]
        _check_size(name, tiff_page.shape)
        return _tiff_pixels(tiff_page, tiff_page.asarray(), name, as_stored=as_stored)


def _read_pillow(source: io.BytesIO, name: Path, page: int, *, as_stored: bool = False) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{name}: image is larger than the {MAX_PIXELS} px limit",
                            "is the header corrupt?") from None
        with opened as img:
            _check_size(name, (img.height, img.width))
            if page:
                try:
                    img.seek(page)
                except EOFError:
                    raise DataError(f"{name}: has no page {page}") from None
            img.load()
            if not as_stored and img.getexif().get(0x0112, 1) not in (0, 1):
                # The pixels as a viewer shows them (and annotation tools label them): a camera's
                # EXIF orientation (rotated or mirrored) is applied, as Pillow's exif_transpose does.
                from PIL import ImageOps

                img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return np.asarray(img, dtype=np.uint16)
            if img.mode == "P":
                if as_stored:
                    return np.asarray(img)  # a palette mask's indices are its labels
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode not in PILLOW_MODES_AS_STORED:
                img = _pillow_luminance(img, name)
            if img.mode == "LA" and not as_stored:
                return np.asarray(img)[..., 0]  # the second band is alpha: only the grey is the image
            return np.asarray(img)


def _pillow_luminance(img: Any, name: Path) -> Any:
    """``img`` as Pillow's own luminance ("L"): read as an array, the channels of CMYK,
    YCbCr, HSV, LAB... would pass for R, G, B (cyan ink as red light) and give a wrong image.

    Modes Pillow cannot take to "L" directly go through the one it can: LAB through
    RGB, premultiplied La through LA (as an LA image is read).
    """
    for via in (None, "RGB", "LA"):
        try:
            return (img if via is None else img.convert(via)).convert("L")
        except ValueError:
            continue
    raise DataError(f"{name}: pixels in colour mode {img.mode} cannot be converted to grayscale",
                    "save the image as grayscale or RGB")


def _tiff_pixels(page: Any, array: np.ndarray, name: Path, *, as_stored: bool = False) -> np.ndarray:
    """A tifffile page's samples, channels last: as intensities (MINISWHITE inverted, palette
    indices coloured), or ``as_stored`` (a mask's labels). Colour models other than gray, RGB
    and palette are converted to luminance by Pillow (as a JPEG in that mode is), or refused."""
    photometric = int(page.photometric) if page.photometric is not None else 1
    axes = str(page.axes)
    if "S" in axes and len(axes) == array.ndim:
        array = np.moveaxis(array, axes.index("S"), -1)  # planar (separate) samples come first
    if photometric in TIFF_PHOTOMETRIC_AS_STORED:
        if as_stored:
            return array
        extra = tuple(int(v) for v in (getattr(page, "extrasamples", None) or ()))
        if array.ndim == 3 and array.shape[-1] in (2, 4) and extra and extra[-1] in (1, 2):
            array = array[..., :-1]  # the file says the last sample is alpha: not part of the image
            if array.shape[-1] == 1:
                array = array[..., 0]
        if photometric == TIFF_PHOTOMETRIC_INVERTED:
            return _inverted(array, int(page.bitspersample))
        if photometric == TIFF_PHOTOMETRIC_PALETTE:
            return _palette_colours(array, page.colormap, name)
        return array
    if photometric == 6 and int(page.compression) in (6, 7):
        return array  # JPEG-compressed YCbCr: the decoder already returns RGB
    mode = {5: "CMYK", 6: "YCbCr"}.get(photometric)
    what = f"{name}: TIFF colour model {getattr(page.photometric, 'name', photometric)}"
    if mode is None:
        raise DataError(f"{what} is not supported", "save the image as grayscale or RGB")
    channels = 4 if mode == "CMYK" else 3
    inkset = page.tags.get(332)
    if mode == "CMYK" and inkset is not None and int(inkset.value) != 1:
        raise DataError(f"{what} with inks other than CMYK is not supported",
                        "save the image as grayscale or RGB")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] < channels:
        raise DataError(f"{what} is supported with {channels} 8-bit samples per pixel only, "
                        f"not {array.shape[-1] if array.ndim == 3 else 1} of type {array.dtype}",
                        "save the image as 8-bit CMYK, grayscale or RGB")
    from PIL import Image

    pixels = np.ascontiguousarray(array[..., :channels])
    return np.asarray(Image.fromarray(pixels, mode).convert("L"))


def _inverted(array: np.ndarray, bits: int) -> np.ndarray:
    """A MINISWHITE page as intensities: ``max - value`` for integers (the maximum of
    ``bits`` bits, as Pillow reads such a file), ``-value`` for floats; extra samples
    (alpha) are left as they are.

    >>> _inverted(np.array([0, 200, 255], np.uint8), 8).tolist()
    [255, 55, 0]
    >>> _inverted(np.array([0, 3], np.uint8), 4).tolist(), _inverted(np.array([-128, 127], np.int8), 8).tolist()
    ([15, 12], [127, -128])
    """
    gray = array[..., 0] if array.ndim == 3 else array
    if gray.dtype == bool:
        flipped = ~gray
    elif gray.dtype.kind == "f":
        flipped = -gray
    elif gray.dtype.kind == "u" and bits < 8 * gray.dtype.itemsize:
        flipped = np.asarray((1 << bits) - 1, gray.dtype) - gray
    else:  # all bits used: ~v is max - v unsigned, and mirrors the signed range onto itself
        flipped = ~gray
    if array.ndim != 3:
        return flipped
    out = array.copy()
    out[..., 0] = flipped
    return out


def _palette_colours(array: np.ndarray, colormap: Any, name: Path) -> np.ndarray:
    """A PALETTE page's indices as their colour map's colours: one gray channel when the
    map is gray, else RGB (weighed into luminance by :func:`to_grayscale`, as a palette PNG
    is)."""
    if colormap is None:
        raise DataError(f"{name}: palette TIFF without a colour map", "save the image as grayscale or RGB")
    if array.ndim != 2 or array.dtype.kind not in "bu":
        raise DataError(f"{name}: palette TIFF with samples of shape {array.shape[2:] or 1} and type "
                        f"{array.dtype} is not supported", "save the image as grayscale or RGB")
    colours = np.asarray(colormap).reshape(3, -1)
    index = array.astype(np.uint8) if array.dtype == bool else array
    if index.size and int(index.max()) >= colours.shape[1]:
        raise DataError(f"{name}: palette index {int(index.max())} is beyond the "
                        f"{colours.shape[1]} colours of its colour map", "is the file corrupt?")
    if (colours == colours[0]).all():
        return colours[0][index]
    return colours.T[index]


@dataclass
class LoadedImage:
    """An image array as stored, with the SHA-256 of the file it came from."""

    array: np.ndarray
    sha256: str


def load_image(path: str | Path, page: int = 0, *, as_stored: bool = False) -> LoadedImage:
    """Read one image (one page of a multi-page TIFF) as intensities, and hash its bytes.

    Intensities: a palette image's indices become their colours and a MINISWHITE TIFF is
    inverted, so a picture reads the same however it was saved. ``as_stored=True`` keeps
    the values as written instead (masks: a palette mask's indices are its labels).
    The file is read once; the hash identifies the content whatever its name.
    Raises :class:`NoInputError` for a missing file and :class:`DataError` for
    anything that is not a readable image.
    """
    p = Path(path)
    if not p.exists():
        raise NoInputError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not an image")
    require_regular_file(p)
    data = p.read_bytes()
    if not data:
        raise DataError(f"{p}: empty file")
    digest = hashlib.sha256(data).hexdigest()
    source = io.BytesIO(data)
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            array = _read_tiff(source, p, page, as_stored=as_stored)
        else:
            array = _read_pillow(source, p, page, as_stored=as_stored)
    except (DataError, NoInputError):
        raise
    except MemoryError:
        raise DataError(f"{p}: image too large to decode") from None
    except Exception as exc:  # decoders raise many types for corrupt data
        if type(exc).__name__ == "UnidentifiedImageError":  # Pillow's words name a memory address
            raise DataError(f"{p}: not a TIFF, PNG or JPEG image",
                            "is the file truncated or not an image?") from None
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise DataError(f"{p}: cannot read image ({reason})",
                        "is the file truncated or not an image?") from None
    if array.ndim < 2 or array.size == 0:
        raise DataError(f"{p}: not a 2-D image (shape {array.shape})")
    _require_real_pixels(array, str(p))
    return LoadedImage(array=array, sha256=digest)


def read_image(path: str | Path, page: int = 0, *, as_stored: bool = True) -> np.ndarray:
    """Read one image's values as stored (masks, label images, score maps: palette indices
    and MINISWHITE values as written); ``as_stored=False`` reads intensities, as
    :func:`load_image` does by default."""
    return load_image(path, page, as_stored=as_stored).array


def _require_real_pixels(array: np.ndarray, where: str) -> None:
    """Refuse pixels that are not real numbers: casting complex values keeps the real part
    silently, and objects or records have no intensity at all."""
    if array.dtype.kind not in "biuf":
        kind = {"c": "complex numbers", "O": "Python objects", "V": "records",
                "U": "text", "S": "bytes"}.get(array.dtype.kind, "not numbers")
        raise DataError(f"{where}: pixels are {kind} ({array.dtype}), not intensities",
                        "save the image with integer or real floating-point pixels")


def _tame_float_range(a: np.ndarray) -> np.ndarray:
    """Float pixels scaled by a power of two (exact) so float32 holds them, when their
    magnitude is outside :data:`FLOAT_COMFORT`; ordinary images are returned as they are.

    The scale comes from the 99.5th percentile of the magnitudes, not the maximum, so
    one hot pixel at 1e300 does not push every other pixel to zero; pixels still beyond
    2**64 after scaling lie far above any normalisation percentile and are clipped there.
    """
    finite = a[np.isfinite(a)]
    if not finite.size:
        return a
    magnitude = np.abs(finite)
    peak = magnitude.max()
    if peak == 0 or FLOAT_COMFORT[0] <= peak <= FLOAT_COMFORT[1]:
        return a
    reference = np.percentile(magnitude, NORM_HIGH_PERCENTILE)
    if not reference > 0:
        reference = peak
    exponent = int(np.frexp(reference)[1])
    with np.errstate(over="ignore", under="ignore"):
        scaled = np.ldexp(a, -exponent)
    # NaN and inf stay as they are: normalize() sets them to the median.
    return np.where(np.isfinite(scaled), np.clip(scaled, -FLOAT_COMFORT[1], FLOAT_COMFORT[1]), scaled)


def to_grayscale(array: np.ndarray) -> np.ndarray:
    """A 2-D float32 intensity image from a stored array (RGB averaged by luminance, alpha dropped).

    Extra leading dimensions of length 1 are squeezed; a trailing channel axis
    of 1, 3 or 4 is treated as colour. Anything else (a z-stack) is refused.
    """
    a = np.asarray(array)
    _require_real_pixels(a, "image")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)  # float16 widens exactly (and compares with 2**64 without overflow)
    if a.dtype.kind == "f":
        a = _tame_float_range(a)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4):
        channels = a.shape[-1]
        if channels == 2:
            # Readers drop a sample the file marks as alpha; two samples left are two channels
            # (phase + fluorescence, say): which one is the image cannot be guessed.
            raise DataError(f"an image with 2 channels (shape {array.shape}): monolayer cannot tell "
                            "which one to segment", "save the phase-contrast channel alone")
        if channels == 1:
            a = a[..., 0]
        else:
            rgb = _as_float32(a[..., :3])
            a = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    if a.ndim != 2:
        raise DataError(f"cannot treat an array of shape {array.shape} as one 2-D image",
                        "pick a page of a multi-page file with --page")
    return _as_float32(a)


def _as_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32, with its offset removed first where the cast would round the
    picture away (see :data:`OFFSET_OVER_SPREAD`): normalisation is offset-invariant, so
    ``image + 2**40`` gives what ``image`` gives. uint8/uint16 and float32 images, and any
    whose cast loses nothing that matters, are cast as they are.

    The offset is the image's 0.5th percentile value (a pixel value, subtracted exactly in
    the image's own type), and the spread its 0.5th..99.5th percentile range, as
    :func:`normalize` sees it: one hot or dead pixel changes neither.

    >>> _as_float32(np.array([2**40, 2**40 + 1, 2**40 + 2], np.int64)).tolist()
    [0.0, 1.0, 2.0]
    >>> _as_float32(np.array([1e12, 1e12 + 0.5, 1e12 + 1])).tolist()
    [0.0, 0.5, 1.0]
    """
    wide_integer = a.dtype.kind in "iu" and a.dtype.itemsize > 2
    if not (wide_integer or (a.dtype.kind == "f" and a.dtype.itemsize > 4)):
        return a.astype(np.float32, copy=False)
    values = a.ravel() if wide_integer else a[np.isfinite(a)]
    if not values.size:
        return a.astype(np.float32, copy=False)
    lo, hi = np.percentile(values, [NORM_LOW_PERCENTILE, NORM_HIGH_PERCENTILE], method="nearest")
    if not hi > lo:
        lo, hi = values.min(), values.max()
    peak = max(abs(float(lo)), abs(float(hi)))
    if wide_integer and peak <= FLOAT32_EXACT_INTEGERS:
        return a.astype(np.float32)
    # Python ints: the spread of int64/uint64 values can exceed either type.
    spread = int(hi) - int(lo) if wide_integer else float(hi) - float(lo)
    if not peak > spread * OFFSET_OVER_SPREAD:
        return a.astype(np.float32)
    if not wide_integer:
        return (a - lo).astype(np.float32)
    # Exact differences in the unsigned type of the same width (wrapping arithmetic),
    # signed by which side of the offset a pixel lies on.
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    values, offset = a.view(unsigned), np.asarray(lo, a.dtype).view(unsigned)
    above = (values - offset).astype(np.float32)
    below = (offset - values).astype(np.float32)
    return np.where(a >= lo, above, -below)


def normalize(gray: np.ndarray) -> np.ndarray:
    """Robustly rescale intensities to [0, 1] (0.5th..99.5th percentile, clipped).

    NaN and infinite pixels are set to the median of the finite ones. A flat
    image (no contrast at all) maps to all zeros rather than amplified noise.
    """
    a = _finite_or_median(gray)
    lo, hi = _percentiles(a, NORM_LOW_PERCENTILE, NORM_HIGH_PERCENTILE)
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            return np.zeros(a.shape, dtype=np.float32)
    out = (a - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _percentiles(a: np.ndarray, *qs: float) -> list[float]:
    """``[float(v) for v in np.percentile(a, qs)]`` (linear method), bit for bit, -0.0
    included; from a histogram when ``a`` is a float32 or float64 array of at least 4096
    values that are all integers in 0..65535 (8- and 16-bit images, as :func:`normalize`
    gets them), which is several times faster than numpy's partition of the whole image.
    Anything else (other dtypes, fractions, negatives, NaN, a -0.0 pixel) is numpy's own.

    The two order statistics around each virtual index come from the cumulative counts;
    the interpolation repeats numpy's ``_lerp`` in float64 (exact integers, so the
    differences numpy takes are exact too).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.integers(0, 256, (64, 80)).astype(np.float32)   # 5120 pixels: the histogram
    >>> _percentiles(x, 0.5, 50, 99.5) == [float(v) for v in np.percentile(x, [0.5, 50, 99.5])]
    True
    >>> x[x < 9] = -0.0   # numpy keeps the sign of a -0.0 order statistic (here, at 0.5)
    >>> [str(v) for v in _percentiles(x, 0, 0.5)], [str(v) for v in np.percentile(x, [0, 0.5])]
    (['0.0', '-0.0'], ['0.0', '-0.0'])
    """
    def numpys() -> list[float]:
        return [float(v) for v in np.percentile(a, list(qs))]

    if a.size < 4096 or a.dtype not in (np.float32, np.float64):
        return numpys()  # small (no gain), or a dtype whose arithmetic numpy does its own way
    low, high = a.min(), a.max()
    if not (low >= 0 and high <= 65535):  # also keeps the cast below free of overflow (and NaN)
        return numpys()
    if low == 0 and np.signbit(a).any():
        return numpys()  # a -0.0 pixel: the histogram cannot tell it from 0.0
    integers = a.astype(np.uint16)
    if not np.array_equal(integers, a):
        return numpys()
    cumulative = np.cumsum(np.bincount(integers.ravel()))
    n = a.size
    out = []
    for q in qs:
        virtual = (n - 1) * (q / 100)
        below = min(max(math.floor(virtual), 0), n - 1)
        above = min(below + 1, n - 1)
        t = virtual - below
        lo, hi = (float(np.searchsorted(cumulative, k, side="right")) for k in (below, above))
        diff = hi - lo
        out.append(hi - diff * (1 - t) if t >= 0.5 else lo + diff * t)
    return out


PREPROCESS_MODES = ("percentile", "none", "sam8")
"""What :func:`preprocess` can give a model (``--normalize auto`` picks the backend's own)."""


def _finite_or_median(gray: np.ndarray) -> np.ndarray:
    """``gray`` as float32, NaN and infinite pixels set to the median of the finite ones
    (all of them non-finite: zeros), as :func:`normalize` does."""
    a = np.asarray(gray, dtype=np.float32)
    finite = np.isfinite(a)
    if finite.all():
        return a
    if not finite.any():
        return np.zeros(a.shape, dtype=np.float32)
    return np.where(finite, a, np.median(a[finite])).astype(np.float32)


def raw_intensities(gray: np.ndarray, source_dtype: np.dtype) -> np.ndarray:
    """The stored intensities as float32, integers divided by 2 to the power of their bits.

    uint8 / 2**8, uint16 / 2**16, any unsigned type by 2**bits, signed types by
    2**(bits - 1) (int16 / 32768: negative pixels stay negative, 0 stays 0), so every
    integer image lies in [0, 1) ([-1, 1) when signed); bool and float images are
    returned as they are. Nothing is clipped or stretched. NaN and infinite pixels
    become the median of the finite ones.

    Why a power of two and not the type's maximum (65535): multiplying by a power of
    two is exact in floating point, so a model that normalises the image itself (by
    percentiles, mean and std...) computes bit for bit what it computes on the
    stored integers. Dividing by 65535 rounds, and that last-bit difference is enough
    to move cellpose's flow-following: another set of instances on the same image.

    >>> raw_intensities(np.array([[0.0, 128.0, 255.0]]), np.dtype(np.uint8)).tolist()
    [[0.0, 0.5, 0.99609375]]
    >>> raw_intensities(np.array([[-32768.0, 16384.0]]), np.dtype(np.int16)).tolist()
    [[-1.0, 0.5]]
    >>> raw_intensities(np.array([[0.25, np.nan, 7.0]]), np.dtype(np.float32)).tolist()
    [[0.25, 3.625, 7.0]]
    """
    a = _finite_or_median(gray)
    dtype = np.dtype(source_dtype)
    if dtype.kind in "iu":
        bits = 8 * dtype.itemsize - (1 if dtype.kind == "i" else 0)
        return a * np.float32(2.0**-bits)
    return a  # bool (0/1 after to_grayscale) and floats


def preprocess(gray: np.ndarray, source_dtype: np.dtype, mode: str) -> np.ndarray:
    """The 2-D float32 image a model is given, from :func:`to_grayscale`'s output.

    ``source_dtype`` is the dtype of the array as stored (``load_image(...).array.dtype``),
    before :func:`to_grayscale` turned it into float32. ``mode``:

    ``"percentile"``
        :func:`normalize`: the 0.5th..99.5th percentile stretched to [0, 1] and
        clipped. What monolayer's own U-Net, Mask R-CNN and classical methods, and
        every checkpoint monolayer trained with it, expect.
    ``"none"``
        :func:`raw_intensities`: the stored values, integers divided by 2**bits
        (uint8 / 256, uint16 / 65536; signed types by 2**(bits - 1)), bool and floats
        as they are. Cellpose gets this: its own 1st..99th percentile normalisation
        gives, bit for bit, what ``CellposeModel.eval`` gives the network from the
        file's pixels (an exact power-of-two factor cancels out).
    ``"sam8"``
        The 8-bit image SAM's predictor takes, as v / 255 (SAM's ``prepare`` turns it
        back into uint8 by ``round(x * 255)``, which gives every value exactly). An
        8-bit image goes in unchanged: uint8 as v / 255, bool as 0 and 1 (black and
        white, 0 and 255, in SAM). Anything else (16-bit, 32-bit, float, int8) has no
        8-bit form of its own and gets one conversion, the ``"percentile"`` stretch,
        which ``prepare`` quantises to 0..255.

    NaN and infinite pixels become the median of the finite ones in every mode.

    >>> v = np.arange(256, dtype=np.uint8)[None]
    >>> x = preprocess(v.astype(np.float32), v.dtype, "sam8")
    >>> bool((np.round(x * 255).astype(np.uint8) == v).all())
    True
    >>> preprocess(np.array([[0.0, 32768.0]]), np.dtype(np.uint16), "none").tolist()
    [[0.0, 0.5]]
    >>> preprocess(np.array([[100.0, 200.0]]), np.dtype(np.uint16), "sam8").tolist()
    [[0.0, 1.0]]
    """
    if mode == "percentile":
        return normalize(gray)
    if mode == "none":
        return raw_intensities(gray, source_dtype)
    if mode == "sam8":
        dtype = np.dtype(source_dtype)
        if dtype == np.uint8:
            return _finite_or_median(gray) / np.float32(255)
        if dtype == bool:
            return _finite_or_median(gray)
        return normalize(gray)
    raise UsageError(f"unknown input normalisation {mode!r}",
                     f"choose one of: {', '.join(PREPROCESS_MODES)}")




def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image's first page from its header, without decoding pixels."""
    p = Path(path)
    require_regular_file(p)
    try:
        with open(p, "rb") as handle:
            magic = handle.read(4)
        if magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        from PIL import Image

        with Image.open(p) as img:
            return int(img.height), int(img.width)
    except FileNotFoundError:
        raise NoInputError(f"{p}: no such file") from None
    except Exception as exc:
        raise DataError(f"{p}: cannot read image header ({exc})") from None


def resize_longest(image: np.ndarray, longest: int | None, order: int = 1) -> np.ndarray:
    """``image`` scaled so its longest side is ``longest`` px (never enlarged; None: unchanged)."""
    if longest is None or max(image.shape[:2]) <= longest:
        return image
    from skimage.transform import resize

    scale = longest / max(image.shape[:2])
    shape = tuple(max(1, round(s * scale)) for s in image.shape[:2])
    out = resize(image, shape, order=order, preserve_range=True, anti_aliasing=order > 0)
    return out.astype(image.dtype, copy=False)
