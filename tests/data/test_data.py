"""Tests for bigmodels.data: idx/MNIST, digits, ImageFolder, splits, sampler, transforms, text, build_data."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bigmodels.config import DataConfig
from bigmodels.data import (
    CharTokenizer,
    ImageFolder,
    ResumableSampler,
    TokenWindows,
    build_data,
    dataset_mean_std,
    image_transforms,
    load_digits_data,
    load_mnist,
    read_idx,
    read_image,
    split_dataset,
    split_text,
)
from bigmodels.data.transforms import Normalize, RandomCrop, RandomHorizontalFlip, Resize, ToFloat
from bigmodels.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repo


# ---------------------------------------------------------------------------------------------- idx / MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_read_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "images.gz", images))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, gz=False))
    assert got_images.dtype == torch.uint8 and got_images.shape == (5, 28, 28)
    assert torch.equal(got_images, torch.from_numpy(images))
    assert got_labels.dtype == torch.int64 and got_labels.tolist() == labels.tolist()


@pytest.mark.parametrize("damage", ["short_payload", "cut_gzip", "bad_magic", "empty"])
def test_read_idx_damaged_file_names_path(tmp_path, damage):
    data = idx_bytes(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    path = tmp_path / f"{damage}.gz"
    payload = {
        "short_payload": gzip.compress(data[:-100]),
        "cut_gzip": gzip.compress(data)[:1000],
        "bad_magic": gzip.compress(b"\x12\x34" + data[2:]),
        "empty": b"",
    }[damage]
    path.write_bytes(payload)
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_load_mnist_small_files_and_missing_dir(tmp_path):
    rng = np.random.default_rng(1)
    for stem, shape in [("train-images-idx3-ubyte", (6, 28, 28)), ("train-labels-idx1-ubyte", (6,)),
                        ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))]:
        write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 10, shape, dtype=np.uint8))
    train, test = load_mnist(tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (2, 1, 28, 28)
    assert train.class_names == [str(d) for d in range(10)]

    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
        load_mnist(missing)
    assert str(missing) in str(info.value) and "t10k-labels-idx1-ubyte" in str(info.value)


def test_load_real_mnist():
    root = SHARED_DATA / "mnist"
    if not root.is_dir():
        pytest.skip(f"real MNIST not found at {root}")
    train, test = load_mnist(root)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.dtype == torch.int64 and set(test.labels.tolist()) == set(range(10))
    image, label = train[0]
    assert image.shape == (1, 28, 28) and isinstance(label, int)


# ------------------------------------------------------------------------------------------- digits / split


def test_digits_shapes_and_determinism():
    train, test = load_digits_data(test_fraction=0.2, seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and train.labels.dtype == torch.int64
    assert len(train.class_names) == 10 and set(test.labels.tolist()) == set(range(10))
    again, _ = load_digits_data(test_fraction=0.2, seed=0)
    other, _ = load_digits_data(test_fraction=0.2, seed=1)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.labels, other.labels)


def test_split_dataset_deterministic_disjoint_and_batchable():
    windows = TokenWindows(torch.arange(101), block_size=4)  # 25 windows; ids equal positions
    train, val = split_dataset(windows, 0.2, seed=3)
    train2, val2 = split_dataset(windows, 0.2, seed=3)
    assert torch.equal(train.indices, train2.indices) and len(val) == 5
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    x, y = val.get_batch(torch.tensor([0, 2]))
    assert torch.equal(x[:, 0], val.indices[[0, 2]] * 4) and torch.equal(y, x + 1)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_dataset(windows, 1.5, seed=0)


# ---------------------------------------------------------------------------------------------- ImageFolder


def make_folder(root: Path, sizes=((12, 12),), per_class: int = 4, classes=("cat", "dog", "owl")) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[(c * per_class + i) % len(sizes)]
            ext = ".png" if i % 2 else ".JPG"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / name / f"{i}{ext}", format="PNG" if ext == ".png" else "JPEG"
            )
    return root


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_imagefolder_survives_truncated_file(tmp_path, caplog):
    root = make_folder(tmp_path / "pets", per_class=4)
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored by extension
    bad = truncate(root / "dog" / "1.png")
    ds = ImageFolder(root, channels=3, max_bad_fraction=0.1)
    assert ds.class_names == ["cat", "dog", "owl"] and len(ds) == 12
    with caplog.at_level(logging.WARNING, logger="bigmodels.data"):
        for _ in range(2):  # two "epochs": warned once, never raised
            items = [ds[i] for i in range(len(ds))]
    assert all(img.shape == (3, 12, 12) and img.dtype == torch.uint8 for img, _ in items)
    assert ds.bad_files == [bad]
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1
    assert items[5][1] == 1  # the substitute for dog/1.png is the next file, dog/2.JPG
    assert ds.check() == [bad]
    assert read_image(root / "cat" / "0.JPG", channels=1, size=(6, 9)).shape == (1, 6, 9)
    with pytest.raises(DataError, match="1.png"):
        read_image(bad)


def test_imagefolder_too_many_bad_files(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=2, classes=("a", "b"))
    truncate(root / "a" / "1.png")
    truncate(root / "b" / "1.png")
    ds = ImageFolder(root, channels=1, max_bad_fraction=0.3)
    with pytest.raises(DataError, match="max_bad_fraction") as info:
        [ds[i] for i in range(len(ds))]
    assert "1.png" in str(info.value)


def test_imagefolder_sizes_channels_and_empty(tmp_path):
    root = make_folder(tmp_path / "mixed", sizes=((12, 12), (10, 14)), per_class=2, classes=("a", "b"))
    with pytest.raises(DataError, match="img_size") as info:
        ImageFolder(root)
    assert "12x12" in str(info.value) and "10x14" in str(info.value)
    ds = ImageFolder(root, img_size=8, channels=1)
    image, _ = ds[1]
    assert image.shape == (1, 8, 8) and ds.image_size == (8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- sampler


def collect(sampler: ResumableSampler, count: int | None = None) -> list[list[int]]:
    out = []
    for batch in sampler:
        out.append(batch.tolist())
        if count is not None and len(out) == count:
            break
    return out


def test_sampler_order_and_epochs():
    sampler = ResumableSampler(10, batch_size=4, seed=5)
    assert len(sampler) == 2
    epoch0, epoch1 = collect(sampler), collect(sampler)
    assert sum(epoch0, []) == torch.randperm(10, generator=torch.Generator().manual_seed(5))[:8].tolist()
    assert sum(epoch1, []) == torch.randperm(10, generator=torch.Generator().manual_seed(6))[:8].tolist()
    assert sampler.state_dict() == {"epoch": 2, "batch": 0}
    plain = ResumableSampler(5, batch_size=2, shuffle=False, drop_last=False)
    assert collect(plain) == [[0, 1], [2, 3], [4]]


def test_sampler_exact_mid_epoch_resume():
    reference = ResumableSampler(50, batch_size=8, seed=1)
    uninterrupted = collect(reference) + collect(reference) + collect(reference)  # 3 epochs of 6

    first = ResumableSampler(50, batch_size=8, seed=1)
    head = collect(first) + collect(first, count=3)  # stop 3 batches into epoch 1
    state = first.state_dict()
    assert state == {"epoch": 1, "batch": 3}
    resumed = ResumableSampler(50, batch_size=8, seed=1)
    resumed.load_state_dict(state)
    tail = collect(resumed) + collect(resumed)
    assert head + tail == uninterrupted
    with pytest.raises(ConfigError, match="batches per epoch"):
        resumed.load_state_dict({"epoch": 0, "batch": 99})


def test_sampler_ddp_shards_concatenate_to_global_batch():
    single = collect(ResumableSampler(37, batch_size=12, seed=2, drop_last=False))
    ranks = [collect(ResumableSampler(37, 12, seed=2, drop_last=False, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    assert [len(b) for b in ranks[0]] == [6, 6, 6, 1] and [len(b) for b in ranks[1]] == [6, 6, 6, 0]
    with pytest.raises(ConfigError, match="divide evenly"):
        ResumableSampler(37, batch_size=10, world_size=4)


# ---------------------------------------------------------------------------------------------- transforms


def test_transforms_shapes_determinism_and_per_sample_crops():
    images = torch.arange(16 * 16).reshape(1, 1, 16, 16).repeat(32, 1, 1, 1)  # (32, 1, 16, 16), unique pixels
    crop = RandomCrop(16, padding=3)
    out_a = crop(images, torch.Generator().manual_seed(7))
    out_b = crop(images, torch.Generator().manual_seed(7))
    assert out_a.shape == images.shape and torch.equal(out_a, out_b)
    assert len({tuple(o.flatten().tolist()) for o in out_a}) > 1  # samples get their own offsets
    padded = F.pad(images[0], (3, 3, 3, 3))
    crops = {tuple(padded[:, t : t + 16, s : s + 16].flatten().tolist()) for t in range(7) for s in range(7)}
    assert all(tuple(o.flatten().tolist()) in crops for o in out_a)  # each output is a true crop

    flip = RandomHorizontalFlip(p=0.5)(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(f, i.flip(-1)) for f, i in zip(flip, images, strict=True)]
    assert any(flipped) and not all(flipped)

    batch = torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8)
    train_tf = image_transforms([0.5] * 3, [0.25] * 3, train=True, crop_padding=2, hflip=True, img_size=12)
    x = train_tf(batch, torch.Generator().manual_seed(1))
    assert x.shape == (4, 3, 12, 12) and x.dtype == torch.float32
    assert torch.equal(x, train_tf(batch, torch.Generator().manual_seed(1)))
    eval_x = image_transforms([0.5] * 3, [0.25] * 3, train=False)(batch)
    assert torch.allclose(eval_x, (batch.float() / 255 - 0.5) / 0.25)
    assert Resize(5)(batch).dtype == torch.uint8 and ToFloat()(batch).max() <= 1.0
    with pytest.raises(ConfigError, match="ToFloat"):
        Normalize([0.5], [0.5])(batch)


def test_dataset_mean_std_matches_direct_computation():
    images = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = dataset_mean_std(images, chunk=7)
    x = images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist())


# ---------------------------------------------------------------------------------------------- text


def test_char_tokenizer_round_trip_save_load_and_unknowns(tmp_path):
    tok = CharTokenizer.fit("hello world", unk="?")
    assert tok.vocab == sorted(set("hello world?")) and tok.decode(tok.encode("hello")) == "hello"
    tok.save(tmp_path / "tok.json")
    loaded = CharTokenizer.load(tmp_path / "tok.json")
    assert loaded.vocab == tok.vocab and loaded.unk == "?"
    with pytest.raises(DataError, match="'é'") as info:
        tok.encode("héllo wörld é", unknown="error")
    assert "unknown='replace'" in str(info.value) and "2 distinct" in str(info.value)
    assert tok.decode(tok.encode("héllo")) == tok.decode(tok.encode("héllo", unknown="replace")) == "h?llo"
    assert tok.decode(tok.encode("héllo", unknown="skip")) == "hllo"
    with pytest.raises(DataError, match="unk_token"):  # nothing to replace with: say so, name the fix
        CharTokenizer.fit("abc").encode("abd", unknown="replace")
    with pytest.raises(ConfigError, match="single character"):
        CharTokenizer.fit("abc", unk="<unk>")


def test_token_windows_targets_shift_by_one():
    ids = torch.randint(0, 50, (103,))
    ds = TokenWindows(ids, block_size=10)
    assert len(ds) == 10
    x, y = ds[3]
    assert torch.equal(x, ids[30:40]) and torch.equal(y, ids[31:41])
    bx, by = ds.get_batch(torch.tensor([3, 9]))
    assert bx.shape == (2, 10) and bx.dtype == torch.int64
    assert torch.equal(bx[0], x) and torch.equal(by[:, :-1], bx[:, 1:])
    with pytest.raises(DataError, match="lower block_size"):
        TokenWindows(torch.arange(10), block_size=10)
    assert split_text("abcdefghij", 0.2) == ("abcdefgh", "ij")


# ---------------------------------------------------------------------------------------------- build_data


def test_build_data_digits_and_errors():
    data = build_data(DataConfig(name="digits", img_size=16, crop_padding=2, hflip=True, seed=0))
    assert data.task == "image_classification"
    assert data.model_args == {"in_chans": 1, "img_size": 16, "num_classes": 10}
    assert len(data.train) + len(data.val) == 1437 and len(data.test) == 360
    images, labels = data.train.get_batch(torch.arange(8))
    x = data.train_transform(images, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 16, 16) and labels.shape == (8,)
    assert set(data.meta) == {"class_names", "mean", "std", "img_size", "in_chans"}
    with pytest.raises(ConfigError, match="digits, mnist, cifar10, cifar100, imagefolder, pydoc, text"):
        build_data("cifar")
    with pytest.raises(DataError, match="path="):
        build_data("mnist")


def test_build_data_imagefolder_layouts(tmp_path):
    flat = make_folder(tmp_path / "flat", per_class=5, classes=("a", "b"))
    data = build_data(DataConfig(name="imagefolder", path=str(flat), val_fraction=0.2))
    assert (len(data.train), len(data.val), data.test) == (8, 2, None)
    assert data.model_args == {"in_chans": 3, "img_size": 12, "num_classes": 2}
    split = tmp_path / "split"
    make_folder(split / "train", classes=("a", "b"))
    make_folder(split / "val", per_class=1, classes=("a", "b"))
    data = build_data(DataConfig(name="imagefolder", path=str(split), img_size=6))
    assert (len(data.train), len(data.val)) == (8, 2) and data.meta["img_size"] == 6
    assert data.eval_transform(torch.stack([data.val[0][0]])).shape == (1, 3, 6, 6)


def test_build_data_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("to be or not to be, that is the question. " * 20, encoding="utf-8")
    data = build_data(DataConfig(name="text", path=str(path), block_size=16))
    assert data.task == "language_modeling" and data.train_transform is None
    assert data.model_args == {"vocab_size": data.tokenizer.vocab_size}
    x, y = data.train.get_batch(torch.tensor([0, 1]))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert data.tokenizer.decode(x[0]) == "to be or not to "
    with pytest.raises(DataError, match="UTF-8"):
        (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
        build_data(DataConfig(name="text", path=str(tmp_path / "latin1.txt")))
    assert build_data(DataConfig(name="pydoc", block_size=64)).model_args["vocab_size"] > 80


def test_length_grouped_sampler_covers_every_index_once_with_homogeneous_batches():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=g)
    sampler = ResumableSampler(1000, 20, seed=3, lengths=lengths, group_batches=10)
    batches = list(iter(sampler))
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(1000))  # every sample exactly once per epoch
    spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in batches]).mean()
    plain = [b for b in ResumableSampler(1000, 20, seed=3)]
    plain_spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in plain]).mean()
    assert spread < plain_spread / 4  # far less padding than random batches
    again = list(iter(ResumableSampler(1000, 20, seed=3, lengths=lengths, group_batches=10)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    resumed = ResumableSampler(1000, 20, seed=3, lengths=lengths, group_batches=10)
    resumed.load_state_dict({"epoch": 0, "batch": 7})
    assert all(torch.equal(a, b) for a, b in zip(list(iter(resumed)), batches[7:], strict=True))
