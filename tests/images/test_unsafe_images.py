"""Images that are not what they claim: decompression bombs refused before decoding, symlink loops named."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from _images import digit_images, write_image
from PIL import Image

import kdhub
from kdhub.engine.imagesize import DEFAULT_MAX_PIXELS, declared_size, too_large
from kdhub.engine.stream import LoaderOptions, StreamData

CPU = torch.device("cpu")


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` × ``height`` grey pixels (1.2 GB as RGB
    for 20000²): one zlib stream of zero rows, as real decompression bombs are made."""
    rows = zlib.compress(b"\x00" * (width + 1) * 8, 9)  # the first rows; a decoder would want them all

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture
def folder_with_a_bomb(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = digit_images(12)
    for i in range(40):
        write_image(tmp_path / "train" / str(int(labels[i]) % 2) / f"{i}.png", images[i])
    for i in range(40, 50):
        write_image(tmp_path / "val" / str(int(labels[i]) % 2) / f"{i}.png", images[i])
    bomb = tmp_path / "train" / "0" / "huge.png"
    bomb.write_bytes(bomb_png())
    return tmp_path, bomb


def _stream(root: Path, **options) -> StreamData:
    bundle = kdhub.create("dataset", "image_folder", root=str(root), channels=1, image_size=12).load()
    return StreamData(bundle, CPU, loader=LoaderOptions(workers=0, **options), val_fraction=0, seed=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(1, 1), (37, 21), (640, 480)])
def test_the_declared_size_is_read_from_the_header(fmt, size):
    data = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(data, format=fmt)
    assert declared_size(data.getvalue()) == size


def test_headers_that_say_nothing_are_left_to_the_decoder():
    assert declared_size(b"") is None
    assert declared_size(b"not an image at all") is None
    assert declared_size(b"\xff\xd8\xff") is None  # a truncated JPEG
    assert too_large(b"\x89PNG\r\n\x1a\n", 1) is None  # truncated: the decoder names it


def test_a_bomb_header_is_refused_without_decoding():
    assert declared_size(bomb_png()) == (20000, 20000)
    assert len(bomb_png()) < 2000
    why = too_large(bomb_png(), DEFAULT_MAX_PIXELS)
    assert why is not None
    assert "20000×20000 = 400,000,000 pixels" in why
    assert "decompression bomb" in why


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_an_image_folder_with_a_decompression_bomb_stops_in_one_line(folder_with_a_bomb, decode):
    root, bomb = folder_with_a_bomb
    data = _stream(root, decode=decode)
    with pytest.raises(kdhub.KdhubError) as raised:
        list(data.train_batches(8, False))
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(f"{bomb}: cannot read image (its header declares 20000×20000 = 400,000,000 pixels")
    assert "data.on_error: skip" in text


def test_a_bomb_is_skipped_under_on_error_skip(folder_with_a_bomb, caplog):
    root, bomb = folder_with_a_bomb
    data = _stream(root, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="kdhub"):
        seen = torch.cat([index for _, _, index in data.train_batches(8, False)])
    assert len(seen) == data.size("train") - 1
    assert data.stats() == {"data/skipped_images": 1.0}
    assert any(str(bomb) in r.getMessage() and "decompression bomb" in r.getMessage() for r in caplog.records)


def test_max_pixels_is_a_data_option(folder_with_a_bomb):
    root, _ = folder_with_a_bomb
    data = _stream(root, max_pixels=100)  # smaller than the 12×12 digits: every image is refused
    with pytest.raises(kdhub.KdhubError, match=r"over data\.max_pixels 100"):
        list(data.train_batches(8, False))


@pytest.fixture
def digits_folder(tmp_path: Path) -> Path:
    images, labels = digit_images(12)
    for i in range(30):
        write_image(tmp_path / str(int(labels[i]) % 2) / f"{i}.png", images[i])
    return tmp_path


def test_a_class_folder_linking_back_to_the_root_is_named(digits_folder):
    link = digits_folder / "1" / "again"
    os.symlink(digits_folder, link)
    with pytest.raises(kdhub.KdhubError) as raised:
        kdhub.create("dataset", "image_folder", root=str(digits_folder)).load()
    assert str(raised.value) == (
        f"image_folder: {link} links back to {os.path.realpath(digits_folder)}, a folder it is inside (a symlink"
        " loop: its images would be read again and again); remove the link"
    )


def test_a_class_folder_that_links_to_itself_is_one_line(digits_folder):
    link = digits_folder / "2"
    os.symlink(link, link)
    with pytest.raises(kdhub.KdhubError) as raised:
        kdhub.create("dataset", "image_folder", root=str(digits_folder)).load()
    text = str(raised.value)
    assert text.startswith(f"image_folder: {link} is a symlink that cannot be followed (")
    assert "\n" not in text


def test_a_link_outside_the_dataset_is_followed_with_a_warning(digits_folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    images, _ = digit_images(12)
    write_image(elsewhere / "extra" / "a.png", images[0])
    os.symlink(elsewhere / "extra", digits_folder / "0" / "extra")
    with pytest.warns(UserWarning, match="links outside the dataset's folder"):
        bundle = kdhub.create("dataset", "image_folder", root=str(digits_folder), test_fraction=0.2).load()
    assert len(bundle.train) + len(bundle.test) == 31
