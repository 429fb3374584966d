"""Fashion-MNIST through torchvision, also found in Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from pydantic import Field

import kdhub

from ._torchvision import check_root, to_split

DEBIAN_COPY = Path("/usr/share/datasets/fashion-mnist")
FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class FashionMNIST(kdhub.Dataset):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 28x28 grey images of clothes, 10 classes.

    Loaded with torchvision from ``root``; when the four original ``.gz`` files are missing there, they
    are copied from ``local_copy`` (Debian's ``dataset-fashion-mnist`` puts them in
    /usr/share/datasets/fashion-mnist) before torchvision would download them. Training augmentation:
    random crop with ``crop_padding`` and horizontal flips::

        data: {name: fashion_mnist, options: {root: data}, batch_size: 128, val_fraction: 0.05}
    """

    name = "fashion_mnist"

    class Options(kdhub.Options):
        root: str = Field("data", min_length=1, max_length=4096, description="torchvision root folder")
        download: bool = Field(True, description="download from the internet when no local copy is found")
        local_copy: str = Field(
            str(DEBIAN_COPY),
            min_length=1,
            max_length=4096,
            description="folder holding the original .gz files, tried first",
        )
        crop_padding: int = Field(2, ge=0, le=8, description="random-crop padding in training (0 = none)")
        horizontal_flip: bool = Field(True, description="random horizontal flips in training")

    options: Options

    def load(self) -> kdhub.DataBundle:
        from torchvision import datasets

        check_root(self.options.root)
        raw = Path(self.options.root) / "FashionMNIST" / "raw"
        local = Path(self.options.local_copy)
        try:
            if not all((raw / f[:-3]).exists() for f in FILES) and local.is_dir():
                raw.mkdir(parents=True, exist_ok=True)
                for file in FILES:  # unpacked as torchvision's own download would leave them
                    if (local / file).exists() and not (raw / file[:-3]).exists():
                        with gzip.open(local / file, "rb") as packed, open(raw / file[:-3], "wb") as out:
                            shutil.copyfileobj(packed, out)
        except OSError as err:  # gzip.BadGzipFile is an OSError too
            raise kdhub.ConfigError(
                f"options.local_copy: cannot unpack {local} into {raw}: {getattr(err, 'strerror', None) or err}"
            ) from None
        try:
            train = datasets.FashionMNIST(self.options.root, train=True, download=self.options.download)
            test = datasets.FashionMNIST(self.options.root, train=False, download=self.options.download)
        except (RuntimeError, OSError) as err:
            raise kdhub.KdhubError(
                f"fashion_mnist: {err} (install Debian's dataset-fashion-mnist or set options.download: true)"
            ) from None
        return kdhub.DataBundle(
            train=to_split(train.data, train.targets),
            test=to_split(test.data, test.targets),
            num_classes=10,
            mean=(0.2860,),
            std=(0.3530,),
            augmentation=kdhub.Augmentation(self.options.crop_padding, self.options.horizontal_flip),
            class_names=list(CLASSES),
            source=str(Path(self.options.root).resolve() / "FashionMNIST"),
        )
