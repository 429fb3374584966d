"""StreamData: the same splits as the in-memory path, shards, shuffles, seeded augmentation, resume, errors."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from _images import digit_images, write_image
from torchvision.transforms import v2

import kdhub
from kdhub.contract.dataset import DataBundle, TensorSplit
from kdhub.engine.data import DeviceData, open_data
from kdhub.engine.stream import LoaderOptions, StreamData, build_transforms, sample_seed

CPU = torch.device("cpu")


class Tensors(torch.utils.data.Dataset):
    """A map-style dataset of uint8 images (what a user's own dataset class returns)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def tensor_dataset(n: int = 200, size: int = 12, preset: str = "cifar", **kw) -> kdhub.FileDataset:
    images, labels = digit_images(size)
    images, labels = images[:n], labels[:n]
    test_images, test_labels = digit_images(size)
    return kdhub.FileDataset(
        train=kdhub.FileSplit(labels, dataset=Tensors(images, labels)),
        test=kdhub.FileSplit(test_labels[-50:], dataset=Tensors(test_images[-50:], test_labels[-50:])),
        num_classes=10,
        mean=(0.5,),
        std=(0.25,),
        transforms=kdhub.ImageTransforms(preset, size=size, resize=size + 2, padding=2, **kw),
        channels=1,
        name="digits_stream",
        source="memory",
    )


def stream(bundle: kdhub.FileDataset, **kw) -> StreamData:
    options = {k: kw.pop(k) for k in ("workers", "decode", "on_error") if k in kw}
    options.setdefault("workers", 0)
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("seed", 0)
    return StreamData(bundle, CPU, loader=LoaderOptions(**options), **kw)


def test_open_data_dispatches_on_what_load_returned():
    assert isinstance(open_data(tensor_dataset(), CPU, val_fraction=0, train_fraction=1, seed=0), StreamData)
    with pytest.raises(TypeError, match=r"kdhub.DataBundle or kdhub.FileDataset"):
        open_data([1, 2], CPU, val_fraction=0, train_fraction=1, seed=0)


def test_splits_are_the_in_memory_paths_splits():
    bundle = tensor_dataset(n=300)
    tensors = DataBundle(
        train=TensorSplit(torch.zeros((300, 1, 2, 2), dtype=torch.uint8), bundle.train.labels),
        test=TensorSplit(torch.zeros((50, 1, 2, 2), dtype=torch.uint8), bundle.test.labels),
        num_classes=10,
        mean=(0.5,),
        std=(0.5,),
    )
    for val, frac in ((0.1, 1.0), (0.2, 0.5), (0.0, 1.0)):
        s = stream(bundle, val_fraction=val, train_fraction=frac, seed=7)
        d = DeviceData(tensors, CPU, val_fraction=val, seed=7, train_fraction=frac)
        assert s.has("val") == d.has("val")
        for split in ("train", "val", "test"):
            if d.has(split):
                assert torch.equal(s.labels(split), d.labels(split)), split
                assert s.size(split) == d.size(split)
    # the validation split is held out of the training files by index
    s = stream(bundle, val_fraction=0.1, seed=7)
    assert not set(s.views["train"].index.tolist()) & set(s.views["val"].index.tolist())


def test_an_epoch_covers_the_training_split_once_with_a_new_order_each_epoch():
    s = stream(tensor_dataset(n=100), val_fraction=0.0)
    first = [idx for _, _, idx in s.train_batches(32, drop_last=False)]
    assert [len(i) for i in first] == [32, 32, 32, 4]
    assert sorted(torch.cat(first).tolist()) == list(range(100))
    second = torch.cat([idx for _, _, idx in s.train_batches(32, drop_last=False)])
    assert sorted(second.tolist()) == list(range(100))
    assert not torch.equal(torch.cat(first), second)
    assert [len(i) for _, _, i in s.train_batches(32, drop_last=True)] == [32, 32, 32]
    assert s.steps_per_epoch(32, True) == 3
    assert s.steps_per_epoch(32, False) == 4
    assert s.state_dict() == {"epochs_done": 3, "position": 0}


def test_labels_and_indices_belong_together():
    bundle = tensor_dataset(n=120)
    s = stream(bundle, val_fraction=0.25)
    train_index = s.views["train"].index
    for _, y, idx in s.train_batches(16, drop_last=False):
        assert torch.equal(y, bundle.train.labels[train_index[idx]])
    for split in ("val", "test"):
        seen = torch.cat([idx for _, _, idx in s.eval_batches(split, 7)])
        assert seen.tolist() == list(range(s.size(split)))  # evaluation: in index order


def test_ranks_take_disjoint_shards_of_each_global_batch():
    bundle = tensor_dataset(n=100)
    one = [idx for _, _, idx in stream(bundle).train_batches(20, drop_last=False)]
    ranks = [[idx for _, _, idx in stream(bundle, rank=r, world_size=2).train_batches(20, False)] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for step, batch in enumerate(one):
        a, b = ranks[0][step], ranks[1][step]
        assert not set(a.tolist()) & set(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(batch.tolist())
    evals = [[idx for _, _, idx in stream(bundle, rank=r, world_size=2).eval_batches("test", 8)] for r in (0, 1)]
    merged = sorted(torch.cat(evals[0] + evals[1]).tolist())
    assert merged == list(range(50))


def test_augmentation_depends_on_seed_epoch_and_index_only():
    bundle = tensor_dataset(n=64, preset="imagenet")
    a = list(stream(bundle).train_batches(16, False))
    b = list(stream(bundle, workers=2).train_batches(16, False))
    for (xa, _, ia), (xb, _, ib) in zip(a, b, strict=True):
        assert torch.equal(ia, ib)
        assert torch.equal(xa, xb)
    # a sample's augmentation is its own: the same sample in another batch composition is the same image
    s = stream(bundle)
    x, _, idx = next(s.train_batches(16, False))
    pos = int(idx[3])
    raw = bundle.train.dataset[int(s.views["train"].index[pos])][0]
    torch.manual_seed(sample_seed(0, 1, pos))
    train_tf, _ = build_transforms(bundle.transforms)
    expected = s.normalise(train_tf(raw).unsqueeze(0))
    assert torch.equal(x[3:4], expected)


def test_loading_in_process_does_not_move_the_runs_random_state():
    s = stream(tensor_dataset(n=40, preset="imagenet"))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    list(s.train_batches(16, False))
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_continues_with_the_same_batches():
    bundle = tensor_dataset(n=100, preset="imagenet")
    s = stream(bundle)
    list(s.train_batches(16, False))
    epoch2 = s.train_batches(16, False)
    taken = [next(epoch2) for _ in range(3)]
    state = s.state_dict()
    assert state == {"epochs_done": 1, "position": 3}
    rest = list(epoch2)
    epoch3 = list(s.train_batches(16, False))
    resumed = stream(bundle, workers=1)
    resumed.load_state_dict(state)
    again = list(resumed.train_batches(16, False)) + list(resumed.train_batches(16, False))
    assert len(taken) + len(rest) == s.steps_per_epoch(16, False) == 6
    for (x, _, i), (x2, _, i2) in zip(rest + epoch3, again, strict=True):
        assert torch.equal(i, i2)
        assert torch.equal(x, x2)


def test_uint8_batches_are_normalised_on_the_device():
    bundle = tensor_dataset(n=30, preset="resize", flip=False)
    s = stream(bundle, val_fraction=0)
    x = s.example(3)
    raw = torch.stack([bundle.train.dataset[i][0] for i in range(3)]).float() / 255
    assert torch.allclose(x, (raw - 0.5) / 0.25)
    assert x.dtype == torch.float32


def test_presets_are_the_named_transforms():
    spec = kdhub.ImageTransforms("imagenet", size=8, resize=10)
    train, evaluate = build_transforms(spec)
    assert [type(t) for t in train.transforms] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip]
    assert [type(t) for t in evaluate.transforms] == [v2.Resize, v2.CenterCrop]
    assert evaluate(torch.zeros(3, 20, 30, dtype=torch.uint8)).shape == (3, 8, 8)
    train, _ = build_transforms(kdhub.ImageTransforms("cifar", size=8, padding=4, flip=False, brightness=0.4))
    assert [type(t) for t in train.transforms] == [v2.Resize, v2.CenterCrop, v2.RandomCrop, v2.ColorJitter]
    assert train.transforms[2].padding == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="unknown transform preset"):
        kdhub.ImageTransforms("autoaugment")


def test_pil_images_and_encoded_bytes_from_a_map_style_dataset():
    from PIL import Image
    from torchvision.io import encode_png

    images, labels = digit_images(12)

    class Mixed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int):
            if i % 2:
                return Image.fromarray(images[i, 0].numpy()), int(labels[i])
            return encode_png(images[i]), int(labels[i])

    split = kdhub.FileSplit(labels[:40], dataset=Mixed())
    bundle = kdhub.FileDataset(
        split, split, 10, (0.0,), (1.0,), kdhub.ImageTransforms("resize", size=12, flip=False), channels=1
    )
    x, _, idx = next(stream(bundle, val_fraction=0).eval_batches("test", 40))
    assert torch.equal((x * 255).round().to(torch.uint8), images[:40])
    assert idx.tolist() == list(range(40))


# files, describe() and bad images -------------------------------------------------------------


@pytest.fixture
def small_folder(tmp_path):
    images, labels = digit_images(12)
    for i in range(60):
        write_image(tmp_path / "train" / str(int(labels[i])) / f"{i}.png", images[i])
    for i in range(60, 80):
        write_image(tmp_path / "val" / str(int(labels[i])) / f"{i}.jpg", images[i].expand(3, -1, -1).contiguous())
    return tmp_path


def folder(root, **options):
    return kdhub.create("dataset", "image_folder", root=str(root), channels=1, **options).load()


def test_describe_has_the_mlflow_schema_and_a_stable_digest(small_folder):
    bundle = folder(small_folder, image_size=12, augment="cifar")
    s = stream(bundle, val_fraction=0.2, seed=3)
    train = s.describe("train")
    assert set(train) == {"name", "source", "digest", "num_samples", "shape", "num_classes"}
    assert train["name"] == "image_folder"
    assert train["source"] == str(small_folder.resolve())
    assert train["num_samples"] == s.size("train")
    assert train["shape"] == [1, 12, 12]
    assert train["num_classes"] == 10
    files = bundle.train
    index = s.views["train"].index.tolist()
    pairs = sorted((files.files[i], int(files.labels[i])) for i in index)
    text = "".join(f"{name}\t{label}\n" for name, label in pairs)
    assert train["digest"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    val = s.describe("val")
    held = s.held_out.numpy().astype("<i8").tobytes()
    assert val["indices_digest"] == hashlib.sha256(held).hexdigest()[:16]
    same = stream(folder(small_folder, image_size=12, augment="cifar"), val_fraction=0.2, seed=3)
    assert same.describe("val") == val
    other = stream(bundle, val_fraction=0.2, seed=4).describe("val")
    assert other["indices_digest"] != val["indices_digest"]
    assert "indices_digest" not in s.describe("test")


def test_decoding_on_the_device_matches_decoding_in_workers(small_folder):
    bundle = folder(small_folder, image_size=12, resize_size=14)
    a = list(stream(bundle).train_batches(16, False)) + list(stream(bundle).eval_batches("test", 16))
    b = stream(bundle, decode="device", workers=1)
    b_batches = list(b.train_batches(16, False)) + list(b.eval_batches("test", 16))
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b_batches, strict=True):
        assert torch.equal(ia, ib)
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


def corrupt(small_folder):
    victim = sorted((small_folder / "train").rglob("*.png"))[4]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    return victim


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_a_corrupt_image_stops_with_its_name(small_folder, decode):
    victim = corrupt(small_folder)
    s = stream(folder(small_folder, image_size=12), val_fraction=0, workers=1, decode=decode)
    with pytest.raises(kdhub.KdhubError) as err:
        list(s.train_batches(8, False))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{victim}: cannot read image (")
    assert "data.on_error: skip" in text


def test_a_missing_file_stops_with_its_name(small_folder):
    bundle = folder(small_folder, image_size=12)
    victim = small_folder / "val" / bundle.test.files[2]
    victim.unlink()
    s = stream(bundle, val_fraction=0)
    with pytest.raises(kdhub.KdhubError, match=f"^{victim}: cannot read image"):
        list(s.eval_batches("test", 8))


def test_skipped_images_are_warned_and_counted(small_folder, caplog):
    victim = corrupt(small_folder)
    s = stream(folder(small_folder, image_size=12), val_fraction=0, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="kdhub"):
        seen = torch.cat([idx for _, _, idx in s.train_batches(8, False)])
        list(s.train_batches(8, False))
    assert len(seen) == 59
    assert s.stats() == {"data/skipped_images": 2.0}  # once per epoch
    assert s.stats() == {"data/skipped_images": 0.0}
    warnings = [r.getMessage() for r in caplog.records if "skipped unreadable image" in r.getMessage()]
    assert len(warnings) == 1  # one warning per file, however often it is met
    assert str(victim) in warnings[0]
    assert stream(folder(small_folder, image_size=12)).stats() == {}
