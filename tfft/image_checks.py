"""Checks of one image file before training: will ``tf.io.decode_image`` read it, whole?

TensorFlow's decoder turns the files users bring into uint8 RGB by itself: alpha is dropped,
palettes applied, 16-bit PNGs scaled to 8 bits, grayscale and CMYK JPEGs converted, an animated
GIF read as its first frame. What it cannot do would surface minutes into an epoch as a stack
trace, so it is found here, before any training, as a phrase naming the problem:

- a file whose first bytes are no image (corrupt, mislabelled, a macOS ``._`` resource fork);
- a truncated file (a JPEG without its end marker, a PNG without IEND): TensorFlow refuses it;
- a BMP it cannot read (1, 4 or 16 bits per pixel, RLE) or reads wrongly (an 8-bit BMP's colour
  palette is ignored: each pixel becomes its palette index as a gray level);
- an image over ``MAX_PIXELS``, several gigabytes per decoded copy.

A check reads the file's header and its last few KiB; only a file that looks incomplete (or whose
size the header does not tell) is decoded, to be sure.
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO, Literal

import tensorflow as tf

MAX_PIXELS = 178_956_970  # Pillow's decompression-bomb threshold: 537 MB per decoded RGB copy
SIGNATURES = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"GIF87a": "gif",
              b"GIF89a": "gif", b"BM": "bmp"}
HEAD_BYTES = 2048  # a BMP's headers and a 256-colour palette
TAIL_BYTES = 4096  # where a complete JPEG's end marker or PNG's IEND chunk lies
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
CONVERT = "convert it to PNG or JPEG"


def image_problem(path: str) -> str | None:
    """Why TensorFlow could not train on ``path``, as a phrase that follows the file's name
    ("is truncated ..."), or None when it can."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            kind = next((k for sig, k in SIGNATURES.items() if head.startswith(sig)), None)
            if kind is None:
                return (f"is not a JPEG/PNG/BMP/GIF image (corrupt or mislabelled file; its "
                        f"first bytes are {head[:4]!r})")
            size = jpeg_size(f) if kind == "jpeg" else header_size(kind, head)
            file_bytes = os.fstat(f.fileno()).st_size
            f.seek(max(0, file_bytes - TAIL_BYTES))
            tail = f.read()
    except OSError as err:
        return unreadable(path, err)
    problem = size_problem(size) or (bmp_problem(head) if kind == "bmp" else None)
    if problem is None and (size is None or not looks_complete(kind, head, tail, file_bytes)):
        problem = decode_problem(path)
    return problem


def unreadable(path: str, err: OSError) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "is a broken symbolic link"
    return f"cannot be read ({err.strerror or err})"


def header_size(kind: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF or BMP header; None when the header is cut short."""
    if kind == "png" and head[12:16] == b"IHDR" and len(head) >= 24:
        return _uint(head, 16, 4, "big"), _uint(head, 20, 4, "big")
    if kind == "gif" and len(head) >= 10:
        return _uint(head, 6, 2), _uint(head, 8, 2)
    if kind == "bmp" and len(head) >= 26 and _uint(head, 14, 4) >= 40:
        height = int.from_bytes(head[22:26], "little", signed=True)
        return int.from_bytes(head[18:22], "little", signed=True), abs(height)
    return None


def jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, found by skipping the segments before it
    (EXIF blocks can be 64 KiB each, so the file is walked, not read)."""
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte before the marker
            f.seek(-1, os.SEEK_CUR)
            continue
        if marker[1] in (0xD9, 0xDA):  # image end or scan data before any frame header
            return None
        if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD7:  # markers without a length
            continue
        segment = f.read(7 if marker[1] in JPEG_FRAME_MARKERS else 2)
        if len(segment) < 2:
            return None
        if marker[1] in JPEG_FRAME_MARKERS:
            return (_uint(segment, 5, 2, "big"), _uint(segment, 3, 2, "big")) \
                if len(segment) == 7 else None
        f.seek(_uint(segment, 0, 2, "big") - 2, os.SEEK_CUR)


def size_problem(size: tuple[int, int] | None) -> str | None:
    if size is None:
        return None
    width, height = size
    if width <= 0 or height <= 0:
        return f"has no pixels ({width}x{height})"
    if width * height > MAX_PIXELS:
        return (f"is {width}x{height} pixels, over the {MAX_PIXELS:,} a decoded image may have "
                f"({width * height * 3 / 1e9:.1f} GB per copy); downscale it")
    return None


def bmp_problem(head: bytes) -> str | None:
    """The BMPs TensorFlow's decoder gets wrong: it reads 8, 24 or 32 bits per pixel,
    uncompressed, and takes 8-bit pixels as gray levels whatever the palette says."""
    if len(head) < 54 or _uint(head, 14, 4) < 40:
        return f"is an OS/2 or cut-short BMP, which TensorFlow cannot decode; {CONVERT}"
    bits, compression = _uint(head, 28, 2), _uint(head, 30, 4)
    if bits not in (8, 24, 32) or compression not in (0, 3):
        packed = "an RLE-compressed" if compression in (1, 2) else f"a {bits}-bit"
        return f"is {packed} BMP, which TensorFlow cannot decode; {CONVERT}"
    if bits == 8 and not gray_palette(head):
        return (f"is an 8-bit BMP with a colour palette, which TensorFlow would read as gray "
                f"levels; {CONVERT}")
    return None


def gray_palette(head: bytes) -> bool:
    """Whether an 8-bit BMP's palette maps each index i to the gray (i, i, i)."""
    start = 14 + _uint(head, 14, 4)
    colours = _uint(head, 46, 4) or 256
    palette = head[start:start + 4 * colours]
    return len(palette) == 4 * colours and all(
        palette[4 * i] == palette[4 * i + 1] == palette[4 * i + 2] == i for i in range(colours))


def looks_complete(kind: str, head: bytes, tail: bytes, file_bytes: int) -> bool:
    """Whether the file seems to end where its format ends (trailing bytes are harmless)."""
    if kind == "jpeg":
        return b"\xff\xd9" in tail
    if kind == "png":
        return b"IEND" in tail
    if kind == "gif":
        return tail.rstrip(b"\0").endswith(b";")
    width, height = header_size(kind, head) or (0, 0)
    row = (width * _uint(head, 28, 2) + 31) // 32 * 4
    return file_bytes >= _uint(head, 10, 4) + row * height


def decode_problem(path: str) -> str | None:
    """Decodes the file as training will; its error, if any, in a phrase."""
    try:
        tf.io.decode_image(tf.io.read_file(os.fsencode(path)), channels=3,
                           expand_animations=False)
    except tf.errors.OpError as err:
        return f"cannot be decoded (truncated or corrupt: {tf_reason(err)})"
    return None


def tf_reason(err: tf.errors.OpError) -> str:
    """TensorFlow's message without its op and device decorations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:[^\]]*\].*", "", err.message or str(err))
    return (text.strip().splitlines() or [type(err).__name__])[0].rstrip(".")


def _uint(data: bytes, offset: int, width: int,
          order: Literal["little", "big"] = "little") -> int:
    return int.from_bytes(data[offset:offset + width], order)
