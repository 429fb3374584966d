"""A folder of class folders of images, streamed from disk."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import kdhub

from ._files import (
    IMAGE_EXTENSIONS,
    TransformOptions,
    class_folders,
    existing_folder,
    folder_split,
    same_classes,
    stratified_holdout,
    subset,
)


class ImageFolder(kdhub.Dataset):
    """Your own images: one folder per class, streamed from disk (JPEG, PNG, WebP, GIF).

    Two layouts, found by looking at ``root``:

    - ``root/train/<class>/*.jpg`` with ``root/val/<class>/...`` or ``root/test/<class>/...`` as the
      evaluation split (``test_split`` picks one when both exist; the class folders must match);
    - ``root/<class>/*.jpg``: one folder, split into training and test by ``test_fraction`` per class
      (fixed by ``split_seed``, independent of the run seed).

    Labels are the positions of the class folders in sorted order; class names are the folder names.
    The validation split (``data.val_fraction``) is held out of the training split by the engine.
    Images are decoded by ``torchvision.io`` in DataLoader workers and augmented with a
    ``transforms.v2`` preset (``augment``); ``data.workers``, ``data.prefetch``, ``data.decode`` and
    ``data.on_error`` control the loader. A missing root, a class folder without images, train and
    evaluation folders with different classes, or an unreadable image stop the run with one line
    naming the folder or file::

        data:
          name: image_folder
          options: {root: /data/flowers, augment: imagenet, image_size: 224}
          batch_size: 128
          val_fraction: 0.05
          workers: 8
    """

    name = "image_folder"

    class Options(TransformOptions):
        root: str = Field(
            min_length=1, max_length=4096, description="folder holding train/ and val/ or test/, or the class folders"
        )
        test_split: Literal["auto", "val", "test"] = Field(
            "auto", description="evaluation folder next to train/ (auto: val/, else test/)"
        )
        test_fraction: float = Field(
            0.2, gt=0, lt=1, description="one-folder layout: class-balanced fraction of the images kept for test"
        )
        split_seed: int = Field(0, ge=0, description="one-folder layout: seed of the train/test split")
        extensions: tuple[str, ...] = Field(IMAGE_EXTENSIONS, min_length=1, description="image file suffixes")

    options: Options

    def load(self) -> kdhub.FileDataset:
        o = self.options
        who = self.name
        root = existing_folder(o.root, who)
        extensions = tuple(e.lower() for e in o.extensions)
        if (root / "train").is_dir():
            train_dir = root / "train"
            wanted = ["val", "test"] if o.test_split == "auto" else [o.test_split]
            found = [root / name for name in wanted if (root / name).is_dir()]
            if not found:
                raise kdhub.KdhubError(
                    f"{who}: {root} has train/ but no {' or '.join(w + '/' for w in wanted)} folder for evaluation"
                )
            test_dir = found[0]
            classes = class_folders(train_dir, who)
            same_classes(train_dir, classes, test_dir, class_folders(test_dir, who), who)
            train = folder_split(train_dir, classes, who, extensions)
            test = folder_split(test_dir, classes, who, extensions)
        else:
            classes = class_folders(root, who)
            everything = folder_split(root, classes, who, extensions)
            kept, held = stratified_holdout(everything.labels, o.test_fraction, o.split_seed)
            train, test = subset(everything, kept), subset(everything, held)
        mean, std = o.statistics(who)
        return kdhub.FileDataset(
            train=train,
            test=test,
            num_classes=len(classes),
            mean=mean,
            std=std,
            transforms=o.transforms(),
            class_names=classes,
            channels=o.channels,
            name=self.name,
            source=str(root.resolve()),
        )
