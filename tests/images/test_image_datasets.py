"""The streamed image datasets: layouts, class names, splits, and one clear error for every bad layout."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from _images import DIGIT_NAMES, WNIDS, digit_images, write_folder, write_image

import kdhub


def load(name: str, **options) -> kdhub.FileDataset:
    return kdhub.create("dataset", name, **options).load()


def test_image_folder_with_train_and_val(digit_folder):
    data = load("image_folder", root=str(digit_folder))
    assert isinstance(data, kdhub.FileDataset)
    assert data.class_names == [str(d) for d in range(10)]
    assert (len(data.train), len(data.test)) == (1400, 397)
    first = data.train.files[0]
    assert first.startswith("0/")
    assert data.train.labels[0] == 0
    assert Path(data.train.root) == digit_folder / "train"
    assert Path(data.test.root) == digit_folder / "val"
    assert data.transforms == kdhub.ImageTransforms("imagenet", 224, 256)
    assert data.name == "image_folder"
    assert data.source == str(digit_folder.resolve())
    # labels follow the class folder of each file
    assert all(f.split("/")[0] == str(int(y)) for f, y in zip(data.train.files, data.train.labels, strict=True))


def test_image_folder_prefers_val_and_can_take_test(tmp_path):
    images, labels = digit_images(8)
    names = [str(d) for d in range(10)]
    write_folder(tmp_path / "train", images[:100], labels[:100], names)
    write_folder(tmp_path / "test", images[100:150], labels[100:150], names)
    assert len(load("image_folder", root=str(tmp_path)).test) == 50
    write_folder(tmp_path / "val", images[150:180], labels[150:180], names)
    assert len(load("image_folder", root=str(tmp_path)).test) == 30
    assert len(load("image_folder", root=str(tmp_path), test_split="test").test) == 50


def test_image_folder_one_root_is_split_by_class(tmp_path):
    images, labels = digit_images(8)
    write_folder(tmp_path, images[:500], labels[:500], DIGIT_NAMES)
    data = load("image_folder", root=str(tmp_path), test_fraction=0.2, split_seed=3)
    assert data.class_names == sorted(DIGIT_NAMES)  # labels are positions of the sorted class folders
    counts = torch.bincount(labels[:500], minlength=10)[[DIGIT_NAMES.index(n) for n in data.class_names]]
    expected = torch.floor(0.2 * counts.double() + 0.5).long()
    assert torch.bincount(data.test.labels, minlength=10).tolist() == expected.tolist()
    assert len(data.train) + len(data.test) == 500
    assert not set(data.train.files) & set(data.test.files)
    again = load("image_folder", root=str(tmp_path), test_fraction=0.2, split_seed=3)
    assert list(again.test.files) == list(data.test.files)


def test_image_folder_grey_statistics_and_preset_options(digit_folder):
    data = load("image_folder", root=str(digit_folder), channels=1, augment="cifar", image_size=16, crop_padding=2)
    assert data.channels == 1
    assert data.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert data.transforms.preset == "cifar"
    assert data.transforms.padding == 2
    with pytest.raises(kdhub.ConfigError, match="need 1 values"):
        load("image_folder", root=str(digit_folder), channels=1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


# bad layouts: one line naming the folder ---------------------------------------------------------


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_root_and_root_that_is_a_file(tmp_path):
    for name in ("image_folder", "imagenet", "cub200"):
        with pytest.raises(kdhub.KdhubError) as err:
            load(name, root=str(tmp_path / "nowhere"))
        assert str(tmp_path / "nowhere") in one_line(err)
        assert "does not exist" in str(err.value) or "neither" in str(err.value)
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(kdhub.KdhubError, match="is a file, not a folder"):
        load("image_folder", root=str(file))


def test_empty_class_folder_is_named(tmp_path):
    images, labels = digit_images(8)
    write_folder(tmp_path / "train", images[:50], labels[:50], DIGIT_NAMES)
    write_folder(tmp_path / "val", images[50:80], labels[50:80], DIGIT_NAMES)
    for image in (tmp_path / "train" / "zero").iterdir():
        image.unlink()
    (tmp_path / "train" / "zero" / "notes.txt").write_text("not an image")
    with pytest.raises(kdhub.KdhubError) as err:
        load("image_folder", root=str(tmp_path))
    assert f"class folder {tmp_path / 'train' / 'zero'} holds no images" in one_line(err)


def test_train_and_val_class_sets_that_differ(tmp_path):
    images, labels = digit_images(8)
    write_folder(tmp_path / "train", images[:60], labels[:60], DIGIT_NAMES)
    write_folder(tmp_path / "val", images[60:90], labels[60:90], DIGIT_NAMES)
    shutil.rmtree(tmp_path / "val" / "seven")
    write_image(tmp_path / "val" / "eleven" / "a.png", images[0])
    with pytest.raises(kdhub.KdhubError) as err:
        load("image_folder", root=str(tmp_path))
    text = one_line(err)
    assert "class folders of" in text
    assert "only in train: seven" in text
    assert "only in val: eleven" in text


def test_folder_without_class_folders(tmp_path):
    images, _ = digit_images(8)
    write_image(tmp_path / "a.png", images[0])
    with pytest.raises(kdhub.KdhubError, match=r"holds no class folders .*its own folder"):
        load("image_folder", root=str(tmp_path))
    (tmp_path / "train").mkdir()
    with pytest.raises(kdhub.KdhubError, match="has train/ but no val/ or test/"):
        load("image_folder", root=str(tmp_path))


# ImageNet -------------------------------------------------------------------------------------


def test_imagenet_torchvision_layout_with_meta(fake_imagenet):
    data = load("imagenet", root=str(fake_imagenet))
    assert data.num_classes == 10
    assert data.class_names == DIGIT_NAMES  # the first name of each synset in meta.bin
    assert (len(data.train), len(data.test)) == (700, 397)
    assert data.train.files[0].startswith(WNIDS[0] + "/")
    assert data.mean == (0.485, 0.456, 0.406)
    assert data.transforms.size == 224


def test_imagenet_plain_folders_with_a_synset_list(fake_imagenet, tmp_path):
    root = tmp_path / "plain"
    shutil.copytree(fake_imagenet / "train", root / "train")
    shutil.copytree(fake_imagenet / "val", root / "val")
    assert load("imagenet", root=str(root)).class_names == WNIDS  # no names: the wnids
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} digit {d}, numeral\n" for d, w in enumerate(WNIDS)))
    assert load("imagenet", root=str(root)).class_names == [f"digit {d}" for d in range(10)]


def test_imagenet_flat_val_folder_and_missing_train(fake_imagenet, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(fake_imagenet / "train", root / "train")
    (root / "val").mkdir()
    for path in list((fake_imagenet / "val").rglob("*.JPEG"))[:5]:
        shutil.copy(path, root / "val" / path.name)
    with pytest.raises(kdhub.KdhubError) as err:
        load("imagenet", root=str(root))
    assert f"{root / 'val'} holds images directly" in one_line(err)
    shutil.rmtree(root / "train")
    with pytest.raises(kdhub.KdhubError, match="has no train/ folder"):
        load("imagenet", root=str(root))


# CUB-200-2011 ---------------------------------------------------------------------------------


def test_cub_release_layout(fake_cub):
    data = load("cub200", root=str(fake_cub))
    assert data.num_classes == 10
    assert data.class_names == [f"Digit_{n}" for n in DIGIT_NAMES]
    assert (len(data.train), len(data.test)) == (600, 299)
    assert Path(data.train.root) == fake_cub / "CUB_200_2011" / "images"
    assert data.train.files[0].endswith("Digit_00000.jpg")
    assert data.train.labels[0] == 0
    # the folder itself works as root too
    assert len(load("cub200", root=str(fake_cub / "CUB_200_2011")).train) == 600


def broken_cub(fake_cub: Path, tmp_path: Path) -> Path:
    shutil.copytree(fake_cub / "CUB_200_2011", tmp_path / "CUB_200_2011")
    return tmp_path / "CUB_200_2011"


def test_cub_missing_index_file(fake_cub, tmp_path):
    base = broken_cub(fake_cub, tmp_path)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(kdhub.KdhubError) as err:
        load("cub200", root=str(tmp_path))
    assert f"{base / 'train_test_split.txt'} is missing" in one_line(err)


def test_cub_malformed_line_is_named_with_its_number(fake_cub, tmp_path):
    base = broken_cub(fake_cub, tmp_path)
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    lines[2] = "three 4"
    (base / "image_class_labels.txt").write_text("\n".join(lines))
    with pytest.raises(kdhub.KdhubError) as err:
        load("cub200", root=str(tmp_path))
    assert f"{base / 'image_class_labels.txt'}:3: expected '<id> <value>'" in one_line(err)


def test_cub_ids_that_disagree_and_missing_images(fake_cub, tmp_path):
    base = broken_cub(fake_cub, tmp_path)
    lines = (base / "train_test_split.txt").read_text().splitlines()
    (base / "train_test_split.txt").write_text("\n".join(lines[:-1]))
    with pytest.raises(kdhub.KdhubError, match="list different image ids"):
        load("cub200", root=str(tmp_path))
    (base / "train_test_split.txt").write_text("\n".join(lines))
    listed = (base / "images.txt").read_text().splitlines()[5].split(" ", 1)[1]
    (base / "images" / listed).unlink()
    with pytest.raises(kdhub.KdhubError) as err:
        load("cub200", root=str(tmp_path))
    assert f"{base / 'images' / listed} is listed in images.txt but missing" in one_line(err)


def test_cub_archive_is_unpacked(fake_cub, tmp_path):
    with tarfile.open(tmp_path / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(fake_cub / "CUB_200_2011", arcname="CUB_200_2011")
    data = load("cub200", root=str(tmp_path))
    assert len(data.train) == 600
    assert (tmp_path / "CUB_200_2011" / "images.txt").is_file()


def test_cub_without_folder_or_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(kdhub.KdhubError) as err:
        load("cub200", root=str(tmp_path))
    assert "holds neither CUB_200_2011/ nor CUB_200_2011.tgz" in one_line(err)
