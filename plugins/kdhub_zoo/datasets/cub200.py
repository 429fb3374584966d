"""CUB-200-2011 birds, from the release's index files, streamed from disk."""

from __future__ import annotations

import tarfile
from pathlib import Path

import torch
from pydantic import Field

import kdhub

from ._files import TransformOptions, existing_folder

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
ARCHIVE = "CUB_200_2011.tgz"
FOLDER = "CUB_200_2011"
INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


def _read_index(path: Path, who: str) -> dict[int, str]:
    """``<image id> <value>`` per line; a missing file or a malformed line is one clear error."""
    if not path.is_file():
        raise kdhub.KdhubError(f"{who}: {path} is missing (is this the CUB_200_2011 folder?)")
    entries: dict[int, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise kdhub.KdhubError(f"{who}: {path}:{number}: expected '<id> <value>', got {line.strip()[:80]!r}")
        entries[int(key)] = value.strip()
    return entries


class CUB200(kdhub.Dataset):
    """CUB-200-2011 (Wah et al. 2011): 11,788 photos of 200 bird species, 5,994 train / 5,794 test.

    Read from the release's own index files in ``root/CUB_200_2011/`` (or ``root`` itself):
    ``images.txt`` (id, path under ``images/``), ``image_class_labels.txt`` (id, class 1..200),
    ``train_test_split.txt`` (id, 1 = train) and ``classes.txt`` (names, the ``001.`` prefix
    dropped). When the folder is missing, ``CUB_200_2011.tgz`` in ``root`` is unpacked, or downloaded
    first with ``download: true`` (needs network access). A missing index file, a malformed line, ids
    that disagree between files or a listed image that is not on disk stop with one line naming it.

    Defaults follow the standard ImageNet preset (RandomResizedCrop 224 + flip; resize 256 + centre
    crop 224). The TLLM appendix recipe adds brightness jitter (see examples/cub200/)::

        data:
          name: cub200
          options: {root: /data, brightness: 0.4}
          batch_size: 64
          val_fraction: 0.05
    """

    name = "cub200"

    class Options(TransformOptions):
        root: str = Field(
            min_length=1, max_length=4096, description="folder holding CUB_200_2011/ (or that folder itself)"
        )
        download: bool = Field(False, description="download CUB_200_2011.tgz when neither folder nor archive exists")

    options: Options

    def load(self) -> kdhub.FileDataset:
        o = self.options
        who = self.name
        base = self._folder()
        images = _read_index(base / "images.txt", who)
        labels = _read_index(base / "image_class_labels.txt", who)
        is_train = _read_index(base / "train_test_split.txt", who)
        for name, other in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            if set(other) != set(images):
                missing = sorted(set(images) ^ set(other))[:5]
                raise kdhub.KdhubError(f"{who}: {base / name} and images.txt list different image ids (e.g. {missing})")
        try:
            label_of = {i: int(v) - 1 for i, v in labels.items()}
            train_flag = {i: int(v) for i, v in is_train.items()}
        except ValueError:
            raise kdhub.KdhubError(f"{who}: {base} has a non-numeric class label or train flag") from None
        num_classes = max(label_of.values()) + 1
        if min(label_of.values()) < 0:
            raise kdhub.KdhubError(f"{who}: {base / 'image_class_labels.txt'} has a class id below 1")
        names = self._class_names(base, num_classes)
        folder = base / "images"
        for i in sorted(images):
            if not (folder / images[i]).is_file():
                raise kdhub.KdhubError(f"{who}: {folder / images[i]} is listed in images.txt but missing")
        splits = {}
        for flag, split in ((1, "train"), (0, "test")):
            ids = [i for i in sorted(images) if train_flag[i] == flag]
            if not ids:
                raise kdhub.KdhubError(f"{who}: {base / 'train_test_split.txt'} puts no image in the {split} split")
            splits[split] = kdhub.FileSplit(
                torch.tensor([label_of[i] for i in ids]), files=[images[i] for i in ids], root=str(folder)
            )
        mean, std = o.statistics(who)
        return kdhub.FileDataset(
            train=splits["train"],
            test=splits["test"],
            num_classes=num_classes,
            mean=mean,
            std=std,
            transforms=o.transforms(),
            class_names=names,
            channels=o.channels,
            name=self.name,
            source=str(base.resolve()),
        )

    def _folder(self) -> Path:
        who = self.name
        root = Path(self.options.root).expanduser()
        if (root / "images.txt").is_file():
            return root
        base = root / FOLDER
        if base.is_dir():
            return base
        archive = root / ARCHIVE
        if not archive.is_file() and self.options.download:
            from torchvision.datasets.utils import download_url

            existing_folder(root.parent if not root.exists() else root, who)
            root.mkdir(parents=True, exist_ok=True)
            try:
                download_url(URL, str(root), ARCHIVE)
            except Exception as err:  # network errors come in many types
                raise kdhub.KdhubError(f"{who}: cannot download {URL} ({type(err).__name__}: {err})") from None
        if archive.is_file():
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(root, filter="data")
            except (tarfile.TarError, OSError) as err:
                raise kdhub.KdhubError(f"{who}: cannot unpack {archive} ({err})") from None
            if base.is_dir():
                return base
            raise kdhub.KdhubError(f"{who}: {archive} holds no {FOLDER}/ folder")
        existing_folder(root, who)
        raise kdhub.KdhubError(
            f"{who}: {root} holds neither {FOLDER}/ nor {ARCHIVE} (set options.download: true to fetch it)"
        )

    def _class_names(self, base: Path, num_classes: int) -> list[str]:
        path = base / "classes.txt"
        if not path.is_file():
            return [str(i + 1) for i in range(num_classes)]
        entries = _read_index(path, self.name)
        names = [entries.get(i + 1, str(i + 1)) for i in range(num_classes)]
        return [name.partition(".")[2] or name for name in names]  # 001.Black_footed_Albatross
