"""Uploads: every common format and colour mode becomes the right RGB picture, and every bad
file (empty, not an image, truncated, decompression bomb) is refused with a clear message."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from pipeline.data.images import MAX_PIXELS, UploadError, decode_upload, square_resize
from tests.conftest import BUNDLED

CAT = BUNDLED / "cat" / "cat_0000.png"


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_a_bundled_png_decodes_to_its_exact_pixels():
    data = CAT.read_bytes()
    image = decode_upload(data, "cat.png")
    assert image.mode == "RGB" and image.size == (32, 32)
    assert image.tobytes() == Image.open(CAT).convert("RGB").tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF"])
def test_other_formats_are_accepted(fmt):
    src = Image.new("RGB", (40, 30), (200, 30, 30))
    image = decode_upload(_encode(src, fmt), f"red.{fmt.lower()}")
    assert image.mode == "RGB" and image.size == (40, 30)
    r, g, b = image.getpixel((20, 15))
    assert r > 180 and g < 60 and b < 60  # still red after lossy coding


def test_gif_gives_its_first_frame():
    frames = [Image.new("P", (16, 16), 0), Image.new("P", (16, 16), 1)]
    for f in frames:
        f.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, 1 green
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = decode_upload(data, "anim.gif")
    assert image.getpixel((8, 8)) == (0, 0, 255)


def test_greyscale_becomes_grey_rgb():
    image = decode_upload(_encode(Image.new("L", (8, 8), 77), "PNG"), "grey.png")
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits():
    src = Image.new("I;16", (8, 8), 0x8000)
    image = decode_upload(_encode(src, "PNG"), "deep.png")
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_transparency_is_composited_on_white():
    src = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    src.putpixel((0, 0), (255, 0, 0, 255))  # one opaque red pixel
    image = decode_upload(_encode(src, "PNG"), "alpha.png")
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_palette_with_transparency_is_composited_on_white():
    src = Image.new("P", (8, 8), 1)
    src.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    data = _encode(src, "PNG", transparency=1)
    assert decode_upload(data, "p.png").getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    src = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    image = decode_upload(_encode(src, "JPEG"), "cmyk.jpg")
    r, g, b = image.getpixel((8, 8))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_square_resize_crops_the_centre_to_the_student_size():
    src = Image.new("RGB", (90, 30), (0, 0, 255))
    src.paste((255, 0, 0), (30, 0, 60, 30))  # the centre square is red
    out = square_resize(src, 32)
    assert out.size == (32, 32)
    assert out.getpixel((16, 16)) == (255, 0, 0) and out.getpixel((1, 1))[0] > 200


# ---- bad uploads -------------------------------------------------------------------------


def test_zero_bytes_is_refused():
    with pytest.raises(UploadError, match="empty"):
        decode_upload(b"", "nothing.png")


def test_a_file_that_is_not_an_image_is_refused():
    with pytest.raises(UploadError, match="not an image"):
        decode_upload(b"name,label\ncat,3\n" * 20, "table.csv")


def test_a_truncated_image_is_refused():
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(UploadError, match="truncated"):
        decode_upload(data[: len(data) // 2], "half.png")


def test_a_truncated_jpeg_is_refused():
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(UploadError, match="truncated"):
        decode_upload(data[: len(data) // 3], "half.jpg")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims width x height pixels (a bomb's header)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("edge", [6_000, 20_000])  # ours (25 MP) and Pillow's bomb error (>179 MP)
def test_a_decompression_bomb_is_refused_before_decoding(edge):
    assert edge * edge > MAX_PIXELS
    with pytest.raises(UploadError, match="too large to decode safely"):
        decode_upload(_png_claiming(edge, edge), "bomb.png")


def test_an_oversized_file_is_refused_before_decoding():
    with pytest.raises(UploadError, match="MiB"):
        decode_upload(b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20), "huge.png")
