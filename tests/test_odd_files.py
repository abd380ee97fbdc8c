"""The image files users bring: each trains as the RGB pixels it shows, or is refused before
training with one line naming it; a folder of all of them trains through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, write_image_folder
from PIL import Image

from tfft import data as data_lib
from tfft.config import DataConfig
from tfft.errors import UserError
from tfft.image_checks import image_problem

RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
HUGE = (8000, 6000)  # 48 megapixels, a phone or DSLR photo


def save(path, image: Image.Image, **options) -> str:
    image.save(path, **options)
    return str(path)


def rgba_png(path):
    save(path, Image.fromarray(np.dstack([PIXELS, ALPHA])), format="PNG")
    return PIXELS, 0


def palette_png(path, transparency: bool = False):
    image = Image.fromarray(PIXELS).quantize(16)
    save(path, image, format="PNG", **({"transparency": 0} if transparency else {}))
    return np.asarray(image.convert("RGB")), 0


def gray16_png(path):
    gray = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
    save(path, Image.fromarray(gray), format="PNG")
    return np.repeat((gray // 257)[..., None].astype(np.uint8), 3, axis=-1), 1


def rgb16_png(path):
    tf.io.write_file(str(path), tf.io.encode_png(tf.constant(PIXELS.astype(np.uint16) * 257)))
    return PIXELS, 0


def mode_jpeg(mode: str):
    def make(path):
        image = Image.fromarray(PIXELS).convert(mode)
        save(path, image, format="JPEG", quality=95)
        with Image.open(path) as written:
            return np.asarray(written.convert("RGB")), 3
    return make


def animated_gif(path):
    frames = [Image.fromarray(np.full((12, 10, 3), c, np.uint8)) for c in ((200, 10, 10),
                                                                           (10, 200, 10))]
    save(path, frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return np.full((12, 10, 3), (200, 10, 10), np.uint8), 0


def one_pixel(fmt: str):
    def make(path):
        save(path, Image.fromarray(PIXELS[:1, :1]), format=fmt)
        return PIXELS[:1, :1], 3 if fmt == "JPEG" else 0
    return make


def bmp(mode: str):
    def make(path):
        save(path, Image.fromarray(np.dstack([PIXELS, ALPHA])).convert(mode), format="BMP")
        with Image.open(path) as written:
            return np.asarray(written.convert("RGB")), 0
    return make


def jpeg_with_trailing_bytes(path):
    """Bytes after the end marker (camera maker notes, a motion photo's video) are harmless."""
    expected, tolerance = mode_jpeg("RGB")(path)
    with open(path, "ab") as f:
        f.write(b"\x00" * 20_000)
    return expected, tolerance


ACCEPTED = {
    "rgba.png": rgba_png,
    "palette.png": palette_png,
    "palette_transparent.png": lambda p: palette_png(p, transparency=True),
    "gray16.png": gray16_png,
    "rgb16.png": rgb16_png,
    "gray.jpg": mode_jpeg("L"),
    "cmyk.jpg": mode_jpeg("CMYK"),
    "animated.gif": animated_gif,
    "one_pixel.png": one_pixel("PNG"),
    "one_pixel.jpg": one_pixel("JPEG"),
    "UPPER.JPG": mode_jpeg("RGB"),
    "Upper.PNG": rgba_png,
    "gray8.bmp": bmp("L"),
    "rgba32.bmp": bmp("RGBA"),
    "my photo ø 日本.jpg": mode_jpeg("RGB"),
    "trailing_bytes.jpg": jpeg_with_trailing_bytes,
}


def decoded(path: str) -> np.ndarray:
    ds = tf.data.Dataset.from_tensors((tf.constant(os.fsencode(path)), tf.constant(0)))
    image, _ = next(iter(data_lib.load_images(ds)))
    return image.numpy()


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_odd_file_trains_as_the_rgb_pixels_it_shows(tmp_path, name):
    path = str(tmp_path / name)
    expected, tolerance = ACCEPTED[name](path)
    assert image_problem(path) is None
    image = decoded(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape[:2] + (3,)
    assert np.abs(image.astype(int) - expected.astype(int)).mean() <= tolerance, \
        "mean error over the tolerance: JPEG decoders differ a little, lossless files not at all"


def truncated(kind: str):
    """A file cut off at two thirds, as an interrupted download or copy leaves it."""
    def make(path):
        save(path, Image.fromarray(PIXELS), format=kind)
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[:len(content) * 2 // 3])
    return make


def write_bytes(content: bytes):
    def make(path):
        with open(path, "wb") as f:
            f.write(content)
    return make


def claimed_size_png(path):
    """A valid PNG whose header claims 20000 x 10000 pixels (a decompression bomb's shape)."""
    save(path, Image.fromarray(PIXELS), format="PNG")
    with open(path, "r+b") as f:
        f.seek(16)
        f.write((20000).to_bytes(4, "big") + (10000).to_bytes(4, "big"))


def broken_link(path):
    os.symlink(path + ".gone", path)


REFUSED = {
    "one_bit.bmp": (lambda p: save(p, Image.fromarray(PIXELS).convert("1"), format="BMP"),
                    "1-bit BMP, which TensorFlow cannot decode"),
    "colour_palette.bmp": (lambda p: save(p, Image.fromarray(PIXELS).quantize(16), format="BMP"),
                           "colour palette, which TensorFlow would read as gray levels"),
    "truncated.jpg": (truncated("JPEG"), "cannot be decoded (truncated or corrupt: jpeg"),
    "truncated.png": (truncated("PNG"), "cannot be decoded (truncated or corrupt: "),
    "truncated.gif": (truncated("GIF"), "cannot be decoded (truncated or corrupt: "),
    "bomb.png": (claimed_size_png, "is 20000x10000 pixels, over the 178,956,970"),
    "empty.jpg": (write_bytes(b""), "is not a JPEG/PNG/BMP/GIF image"),
    "link.jpg": (broken_link, "is a broken symbolic link"),
    "notes.png": (write_bytes(b"hello"), "is not a JPEG/PNG/BMP/GIF image"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_odd_file_refused_before_training_in_one_line_naming_it(tmp_path, name):
    root = write_image_folder(str(tmp_path / "f"), {"a": 2, "b": 2}, size=16)
    path = os.path.join(root, "b", name)
    make, needle = REFUSED[name]
    make(path)
    with pytest.raises(UserError) as err:
        data_lib.load_splits(DataConfig(dataset=f"folder:{root}"), seed=0)
    message = str(err.value)
    assert repr(path) in message and needle in message and "\n" not in message, message


def test_hidden_names_are_skipped_and_links_followed_once(tmp_path, caplog):
    root = write_image_folder(str(tmp_path / "f"), {"a": 2}, size=16)
    elsewhere = write_image_folder(str(tmp_path / "elsewhere"), {"b": 3, "more": 2}, size=16)
    os.symlink(os.path.join(elsewhere, "b"), os.path.join(root, "b"))  # a linked class folder
    os.symlink(os.path.join(elsewhere, "more"), os.path.join(root, "b", "nested"))
    os.symlink(os.path.join(root, "a"), os.path.join(root, "a", "loop"))  # a link cycle
    (tmp_path / "f" / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    write_image_folder(str(tmp_path / "f" / ".ipynb_checkpoints"), {"x": 1}, size=16)
    write_image_folder(str(tmp_path / "f" / "a" / ".thumbs"), {"x": 1}, size=16)
    with caplog.at_level("WARNING", logger="tfft"):
        paths, labels, classes, skipped = data_lib.list_image_folder(root)
    assert classes == ("a", "b") and labels.tolist() == [0] * 2 + [1] * 5
    assert skipped == 1, "the resource fork; hidden folders are not walked"
    assert sum("loop" in p for p in paths) == 0 and sum("nested" in p for p in paths) == 2


def test_a_file_name_that_is_not_utf8_is_read_as_it_is(tmp_path):
    root = write_image_folder(str(tmp_path / "f"), {"a": 2, "b": 2}, size=16)
    odd = os.path.join(os.fsencode(root), b"b", b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        Image.fromarray(PIXELS).save(f, format="JPEG")
    splits = data_lib.load_splits(DataConfig(dataset=f"folder:{root}", validation_fraction=0.0,
                                             test_fraction=0.0), seed=0)
    shapes = sorted(tuple(image.shape) for image, _ in data_lib.load_images(splits.train))
    assert shapes == [(12, 10, 3)] + [(16, 16, 3)] * 4


def test_a_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    root = write_image_folder(str(tmp_path / "f"), {"a": 2, "b": 2}, size=16)
    os.rename(os.path.join(root, "b"), os.path.join(os.fsencode(root), b"caf\xe9"))
    with pytest.raises(UserError, match="expected folder names in UTF-8"):
        data_lib.load_splits(DataConfig(dataset=f"folder:{root}"), seed=0)


# ---------------------------------------------------------------- through the CLI

PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(proc.returncode)
"""


def odd_folder(root: str, elsewhere: str) -> str:
    """Split folders of every accepted odd file, in a non-ASCII class and a class linked from
    ``elsewhere``, with a 48-megapixel JPEG and PNG among the training images."""
    for split in ("train", "test"):
        folder = os.path.join(root, split, "café ünï")
        os.makedirs(folder)
        for name, make in ACCEPTED.items():
            make(os.path.join(folder, name))
        linked = write_image_folder(os.path.join(elsewhere, split), {"plain": 16}, size=32)
        os.symlink(os.path.join(linked, "plain"), os.path.join(root, split, "plain"))
    gradient = np.broadcast_to(np.linspace(0, 255, HUGE[0], dtype=np.uint8)[None, :, None],
                               (HUGE[1], HUGE[0], 3))
    for ext in ("jpg", "png"):  # a gradient compresses to under 1 MB
        Image.fromarray(np.ascontiguousarray(gradient)).save(
            os.path.join(root, "train", "café ünï", f"huge.{ext}"))
    return root


def test_cli_trains_on_a_folder_of_every_odd_file_in_bounded_memory(tmp_path):
    root = odd_folder(str(tmp_path / "odd"), str(tmp_path / "elsewhere"))
    workdir, peak = tmp_path / "run", tmp_path / "rss"
    command = [sys.executable, "-c", PEAK_RSS, str(peak), sys.executable, "-m", "tfft.train",
               f"--dataset=folder:{root}", "--backbone=mobilenet", "--alpha=0.25",
               "--weights=imagenet", "--image_size=32", "--head_units=16", "--head_epochs=1",
               "--finetune_epochs=1", "--batch_size=8", "--verbosity=0", f"--workdir={workdir}"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["class_names"] == ["café ünï", "plain"]
    assert metrics["test"]["examples"] == len(ACCEPTED) + 16
    assert "Traceback" not in proc.stderr
    peak_gb = int(peak.read_text()) / 2**30
    assert peak_gb < 1.6, f"peak RSS {peak_gb:.2f} GB with two 48-megapixel training images"
