"""Image reading, grayscale conversion and robust normalisation, including broken files."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from monolayer.errors import DataError, NoInputError
from monolayer.io.images import image_size, load_image, normalize, read_image, to_grayscale


def test_reads_16bit_tiff_and_hashes_content(tmp_path: Path):
    a = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13)
    tifffile.imwrite(tmp_path / "x.tif", a, compression="zlib")
    loaded = load_image(tmp_path / "x.tif")
    assert loaded.array.dtype == np.uint16 and np.array_equal(loaded.array, a)
    import hashlib
    assert loaded.sha256 == hashlib.sha256((tmp_path / "x.tif").read_bytes()).hexdigest()
    assert image_size(tmp_path / "x.tif") == (48, 64)


def test_multipage_tiff_reads_requested_page(tmp_path: Path):
    pages = np.stack([np.full((8, 9), v, np.uint8) for v in (1, 2, 3)])
    with tifffile.TiffWriter(tmp_path / "m.tif") as w:
        for p in pages:
            w.write(p)
    assert read_image(tmp_path / "m.tif")[0, 0] == 1
    assert read_image(tmp_path / "m.tif", page=2)[0, 0] == 3
    with pytest.raises(DataError, match="page 5"):
        read_image(tmp_path / "m.tif", page=5)


@pytest.mark.parametrize("suffix,mode", [(".png", "L"), (".png", "RGB"), (".png", "RGBA"), (".jpg", "RGB")])
def test_png_and_jpeg(tmp_path: Path, suffix: str, mode: str):
    channels = {"L": (20, 30), "RGB": (20, 30, 3), "RGBA": (20, 30, 4)}[mode]
    arr = np.random.default_rng(0).integers(0, 255, channels, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(tmp_path / f"x{suffix}")
    gray = to_grayscale(read_image(tmp_path / f"x{suffix}"))
    assert gray.shape == (20, 30) and gray.dtype == np.float32


def test_16bit_png(tmp_path: Path):
    arr = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(arr).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png").max() == arr.max()


def test_normalize_ignores_saturated_halo_pixels():
    rng = np.random.default_rng(1)
    a = rng.normal(20000, 500, (100, 100))
    a[:2, :2] = 65535  # a saturated halo: 0.04 % of pixels
    n = normalize(a.astype(np.uint16))
    assert n.min() == 0.0 and n.max() == 1.0
    # The bulk spreads over the range instead of being squashed near 0.3.
    assert np.percentile(n, 95) - np.percentile(n, 5) > 0.5


def test_normalize_flat_nan_and_inf():
    assert not normalize(np.full((5, 5), 7.0)).any()
    a = np.array([[0.0, np.nan], [np.inf, 1.0]])
    n = normalize(a)
    assert np.isfinite(n).all()
    assert not normalize(np.full((2, 2), np.nan)).any()


def test_missing_file(tmp_path: Path):
    with pytest.raises(NoInputError):
        read_image(tmp_path / "nope.tif")


def test_empty_file(tmp_path: Path):
    (tmp_path / "e.tif").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        read_image(tmp_path / "e.tif")


def test_text_named_tif(tmp_path: Path):
    (tmp_path / "t.tif").write_text("hello, I am not an image\n")
    with pytest.raises(DataError, match="not a TIFF, PNG or JPEG image") as err:
        read_image(tmp_path / "t.tif")
    assert " at 0x" not in str(err.value)  # same message on every run


def test_truncated_tiff(tmp_path: Path):
    a = np.random.default_rng(0).integers(0, 60000, (256, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "full.tif", a, compression="zlib")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        read_image(tmp_path / "cut.tif")


def test_truncated_png(tmp_path: Path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        read_image(tmp_path / "cut.png")


def test_decompression_bomb_refused_before_decoding(tmp_path: Path):
    # A PNG header that claims 100000 x 100000 pixels.
    import struct
    import zlib
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(DataError, match="larger than"):
        read_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("dtype,compression", [
    (np.uint8, None), (np.uint16, "zlib"), (np.float32, None), (np.int32, "lzw"), (np.uint8, "packbits"),
])
def test_fast_tiff_path_reads_what_tifffile_reads(tmp_path: Path, dtype, compression):
    import tifffile

    from monolayer.io import images

    rng = np.random.default_rng(3)
    array = (rng.random((37, 53)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", array, compression=compression)
    data = (tmp_path / "a.tif").read_bytes()
    fast = images._read_tiff_fast(data, tmp_path / "a.tif")
    assert fast is not None and fast.dtype == array.dtype
    assert np.array_equal(fast, array) and np.array_equal(read_image(tmp_path / "a.tif"), array)
    # Multi-page, RGB and BigTIFF files take tifffile's path and still read right.
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "big.tif", array, bigtiff=True)
    for name in ("rgb.tif", "big.tif"):
        assert images._read_tiff_fast((tmp_path / name).read_bytes(), tmp_path / name) is None
    assert read_image(tmp_path / "big.tif").shape == (37, 53)
