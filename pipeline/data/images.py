"""Images in one place: safe decoding of uploaded bytes (an UploadError that says in plain words what is
wrong: empty, not an image, truncated, too large to decode safely), the one RGB conversion, PNG bytes in
and out, the pixel hash that identifies an image, and the file suffixes we read.

Any format Pillow reads is accepted (PNG, JPEG, WebP, GIF: first frame, BMP, TIFF); greyscale,
palette, CMYK and 16-bit images become RGB, and transparency is composited on white.
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Refuse files above 20 MiB before decoding anything."""
MAX_PIXELS = 25_000_000
"""Refuse images above 25 megapixels (well below Pillow's own bomb limit of ~89 MP): a
decompression bomb is a small file that decodes to gigabytes."""
WHITE = (255, 255, 255)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes read as images by folder imports and evaluation."""


class UploadError(ValueError):
    """An upload that cannot be used, with a message meant for the person who uploaded it."""


def decode_upload(data: bytes, name: str = "upload") -> Image.Image:
    """Decode `data` (a file called `name`) into a fully loaded RGB image; raise UploadError."""
    if not data:
        raise UploadError(f"{name} is empty (0 bytes): choose an image file (PNG, JPEG, WebP, GIF).")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name} is {len(data) / 2**20:.1f} MiB; the limit is "
                          f"{MAX_UPLOAD_BYTES // 2**20} MiB. Upload a smaller image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image, name)  # from the header alone, before any pixel is decoded
            image.seek(0)  # animated GIF/WebP: the first frame
            image.load()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(f"{name} is too large to decode safely (a possible decompression bomb: "
                          f"{exc}). Resize it before uploading.") from exc
    except UnidentifiedImageError as exc:
        raise UploadError(f"{name} is not an image Pillow can read: upload a PNG, JPEG, WebP or "
                          "GIF file.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise UploadError(f"{name} is damaged or truncated and cannot be decoded ({exc}). "
                          "Re-export or re-download the image and try again.") from exc
    return to_rgb(image)


def decode_file(path: Path) -> Image.Image:
    """Decode an image file from disk exactly as an upload is decoded (the same size and bomb
    checks, the same RGB conversion: 16-bit PNGs are scaled, not clipped); raise UploadError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise UploadError(f"{path.name} is {size / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES // 2**20} MiB.")
        data = path.read_bytes()
    except OSError as exc:
        raise UploadError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    return decode_upload(data, path.name)


def _check_size(image: Image.Image, name: str) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise UploadError(f"{name} has no pixels ({w}x{h}).")
    if w * h > MAX_PIXELS:
        raise UploadError(
            f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels: too large to decode safely (the "
            f"limit is {MAX_PIXELS / 1e6:.0f} MP; a larger image may be a decompression bomb). "
            "Resize it before uploading."
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any-mode image: EXIF rotation applied, transparency composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        image = image.point(lambda v: v / 256).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to size x size (bicubic): the student's input."""
    image = to_rgb(image)
    w, h = image.size
    if w != h:
        edge = min(w, h)
        left, top = (w - edge) // 2, (h - edge) // 2
        image = image.crop((left, top, left + edge, top + edge))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels (and size): the same picture from two sources is one image."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB image
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_IGNORED_CHUNKS = frozenset({b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME",
                             b"bKGD", b"sBIT", b"hIST", b"sPLT"})
"""Ancillary chunks Pillow ignores when it decodes to RGB; any other chunk (eXIf: rotation, tRNS:
transparency, acTL: animation, ...) sends a file through the full decoder."""


def plain_png(data: bytes) -> tuple[bytes, int, int, str] | None:
    """(png, width, height, pixel_hash) of an 8-bit RGB, non-interlaced PNG, or None for anything else.

    The bulk import's fast path: the pixels are decoded by Pillow's own PNG ("zip") decoder without
    the plugin's Python chunk reader, and `png` is the file's IHDR and IDAT chunks as they are (no
    re-encoding, metadata dropped): it decodes to exactly the pixels `decode_upload` + `to_png` give,
    and the hash equals `pixel_hash`. Damaged files (bad CRC, truncated) return None, so the full
    decoder names what is wrong.
    """
    if data[:8] != PNG_SIGNATURE or len(data) > MAX_UPLOAD_BYTES:
        return None
    pos, end_of_data, ihdr, idat = 8, len(data), b"", []
    while True:
        if pos + 12 > end_of_data:
            return None  # no IEND: truncated
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > end_of_data:
            return None
        if kind == b"IHDR" and not ihdr and length == 13:
            ihdr = data[pos:end]
        elif kind == b"IDAT" and ihdr:
            if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
                return None
            idat.append((pos, end))
        elif kind == b"IEND":
            break
        elif kind not in _IGNORED_CHUNKS:
            return None
        pos = end
    if not ihdr or not idat:
        return None
    width, height, depth, color, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", ihdr, 8)
    if (depth, color, compression, filtering, interlace) != (8, 2, 0, 0, 0) or not 0 < width * height <= MAX_PIXELS:
        return None
    png = b"".join([PNG_SIGNATURE, ihdr, *(data[a:b] for a, b in idat), _IEND])
    try:
        pixels = pyspng.load(png)  # libspng: half of Pillow's per-image cost on a small PNG
    except RuntimeError:  # damaged compressed data: let the full decoder say so
        return None
    if pixels.shape != (height, width, 3):
        return None
    h = hashlib.sha256(f"{width}x{height}:".encode())
    h.update(pixels)  # the bytes pixel_hash reads from a PIL image: RGB rows, top to bottom
    return png, width, height, h.hexdigest()


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def decode_png(png: bytes) -> Image.Image:
    """Decode stored PNG bytes to an RGB PIL image."""
    with Image.open(io.BytesIO(png)) as im:
        return im.convert("RGB")


def upscale_png(png: bytes, *, size: int) -> bytes:
    """The image enlarged to `size` pixels with nearest-neighbour, so every pixel stays crisp."""
    img = decode_png(png)
    buf = io.BytesIO()
    # level 1: a quarter of the default's encoding time for ~10% more bytes (a page shows a hundred)
    img.resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
