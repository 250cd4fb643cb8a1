"""Vision data and training extras: CIFAR reader, RandomResizedCrop, mixup/CutMix, label smoothing, channels-last."""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train.test_train import RESUME, make_cfg, weights  # the engine's own resume set-up

from bigmodels.config import DataConfig, resolve_run_config
from bigmodels.data import RandomResizedCrop, build_data, image_transforms, load_cifar10, load_cifar100
from bigmodels.data.cifar import read_cifar_pickle
from bigmodels.errors import ConfigError, DataError
from bigmodels.evaluate import evaluate_model
from bigmodels.tasks import Classification, get_task
from bigmodels.train import Callback, Trainer
from bigmodels.train.mixing import MixUpCutMix, cutmix_box, sample_beta

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------- CIFAR files

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 with every str and bytes written as a Python 2 ``str`` (BINSTRING), as cPickle wrote them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def cifar_pickle(obj) -> bytes:
    """``obj`` pickled as the original files are: Python 2 strings, numpy 1's numpy.core.multiarray global."""
    out = io.BytesIO()
    _Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


def cifar_batch(n: int, seed: int, label_key: bytes = b"labels", classes: int = 10) -> tuple[bytes, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n).tolist()
    batch = {b"batch_label": b"fake batch", label_key: labels, b"data": data, b"filenames": [b"x.png"] * n}
    return cifar_pickle(batch), data, labels


def write_cifar10(folder: Path, per_batch: int = 4) -> tuple[np.ndarray, list, np.ndarray, list]:
    """Fake CIFAR-10 python-version files: 5 train batches of ``per_batch``, a test batch of 3."""
    folder.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for i in range(1, 6):
        raw, data, labels = cifar_batch(per_batch, seed=i)
        (folder / f"data_batch_{i}").write_bytes(raw)
        train_data.append(data)
        train_labels += labels
    raw, test_data, test_labels = cifar_batch(3, seed=99)
    (folder / "test_batch").write_bytes(raw)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(cifar_pickle(meta))
    return np.concatenate(train_data), train_labels, test_data, test_labels


def test_cifar10_directory_and_subfolder(tmp_path):
    train_data, train_labels, test_data, test_labels = write_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the folder itself
        train, test = load_cifar10(root)
        assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
        assert test.images.shape == (3, 3, 32, 32)
        assert train.labels.tolist() == train_labels and test.labels.tolist() == test_labels
        assert train.class_names == CIFAR10_NAMES
        # row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major
        assert train.images[5, 1, 2, 3].item() == train_data[5, 1024 + 2 * 32 + 3]
        assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(test_data))
    # a batch re-pickled by numpy 2 / Python 3 names numpy._core.multiarray: allowed too, keys come back as str
    again = read_cifar_pickle(pickle.dumps({b"data": test_data, "labels": test_labels}, protocol=4), "again")
    assert np.array_equal(again["data"], test_data) and again["labels"] == test_labels


def test_cifar10_tar_gz_is_read_without_extracting(tmp_path):
    write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "dl" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_dir = load_cifar10(tmp_path / "src")
    for root in (archive, archive.parent):  # the archive itself, or the directory holding it
        train, test = load_cifar10(root)
        assert torch.equal(train.images, from_dir[0].images) and torch.equal(test.labels, from_dir[1].labels)
    assert sorted(p.name for p in archive.parent.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted


def test_cifar100_fine_labels_and_build_data(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class_{i:02d}" for i in range(100)]
    raw, _, train_labels = cifar_batch(30, seed=1, label_key=b"fine_labels", classes=100)
    (folder / "train").write_bytes(raw)
    raw, _, test_labels = cifar_batch(5, seed=2, label_key=b"fine_labels", classes=100)
    (folder / "test").write_bytes(raw)
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(cifar_pickle(meta))
    train, test = load_cifar100(tmp_path)
    assert train.labels.tolist() == train_labels and test.labels.tolist() == test_labels
    assert train.class_names == names
    data = build_data(DataConfig(name="cifar100", path=str(tmp_path), val_fraction=0.2, random_resized_crop=True,
                                 hflip=True))
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 5)
    assert data.model_args == {"in_chans": 3, "img_size": 32, "num_classes": 100}
    assert data.meta["mean"] == [0.5071, 0.4865, 0.4409]
    images, _ = data.train.get_batch(torch.arange(4))
    assert data.train_transform(images, torch.Generator().manual_seed(0)).shape == (4, 3, 32, 32)


def test_build_data_cifar10_splits(tmp_path):
    write_cifar10(tmp_path, per_batch=10)
    data = build_data(DataConfig(name="cifar10", path=str(tmp_path), val_fraction=0.1, seed=3))
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 3)
    assert data.meta["class_names"] == CIFAR10_NAMES and data.meta["in_chans"] == 3
    with pytest.raises(DataError, match="cifar10.*path="):
        build_data("cifar10")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_with_another_global_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    bad = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Exploit(marker)}
    (tmp_path / "data_batch_3").write_bytes(cifar_pickle(bad))
    with pytest.raises(DataError, match=r"data_batch_3.*(posix|os)\.system.*refused"):
        load_cifar10(tmp_path)
    assert not marker.exists()  # the command never ran


def test_cifar_missing_and_damaged_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*data_batch_1.*cifar-10-python.tar.gz.*kriz/cifar"):
        load_cifar10(tmp_path / "nowhere")
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataError, match=r"lacks some of the files.*test_batch"):
        load_cifar10(tmp_path)
    write_cifar10(tmp_path)
    good = (tmp_path / "data_batch_2").read_bytes()
    (tmp_path / "data_batch_2").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"data_batch_2.*damaged"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(cifar_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_2.*uint8 \(N, 3072\)"):
        load_cifar10(tmp_path)
    (tmp_path / "not.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match=r"not.tar.gz.*damaged or not a tar"):
        load_cifar10(tmp_path / "not.tar.gz")


# ---------------------------------------------------------------------------------------------- RandomResizedCrop


def test_random_resized_crop_shape_range_and_determinism():
    x = torch.rand(16, 3, 20, 30)
    rrc = RandomResizedCrop(12)
    a = rrc(x, torch.Generator().manual_seed(0))
    b = rrc(x, torch.Generator().manual_seed(0))
    c = rrc(x, torch.Generator().manual_seed(1))
    assert a.shape == (16, 3, 12, 12) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # bilinear weights are a convex combination
    boxes = rrc.params(4000, 20, 30, torch.Generator().manual_seed(2))  # (top, left, h, w)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 20).all() and (left + w <= 30).all()
    area = (h * w).double() / 600
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0  # rounding of h and w moves the area a little
    assert area.min() < 0.15 and area.max() > 0.8  # the whole scale range is used
    aspect = (w / h).double()
    assert ((aspect > 3 / 4 * 0.8) & (aspect < 4 / 3 * 1.25)).all()
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # each sample gets its own crop
    uint8 = rrc((x * 255).round().to(torch.uint8), torch.Generator().manual_seed(0))
    assert uint8.dtype == torch.uint8 and (uint8.float() / 255 - a).abs().max() <= 1 / 255 + 1e-6


def test_random_resized_crop_identity_and_center_fallback():
    x = torch.rand(5, 2, 9, 9)
    same = RandomResizedCrop(9, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, torch.Generator().manual_seed(0))
    assert torch.equal(same, x)  # the whole image at its own size is left untouched
    # a 4 x 64 strip: no crop of >= 90% of the area fits an aspect ratio in [3/4, 4/3], so every sample falls
    # back to the centred crop of the widest allowed ratio: h = 4, w = round(4 * 4/3) = 5, left = (64 - 5) // 2
    strip = torch.rand(6, 1, 4, 64)
    rrc = RandomResizedCrop((4, 5), scale=(0.9, 1.0))
    assert rrc.params(6, 4, 64, torch.Generator().manual_seed(0)).tolist() == [[0, 29, 4, 5]] * 6
    assert torch.equal(rrc(strip, torch.Generator().manual_seed(0)), strip[:, :, :, 29:34])
    with pytest.raises(ConfigError, match="scale"):
        RandomResizedCrop(8, scale=(0.5, 0.2))


def test_image_transforms_with_random_resized_crop():
    batch = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    train_tf = image_transforms([0.5] * 3, [0.25] * 3, train=True, img_size=16, random_resized_crop=True,
                                rrc_scale=(0.3, 1.0))
    assert any(isinstance(t, RandomResizedCrop) for t in train_tf.transforms)
    x = train_tf(batch, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 16, 16)
    eval_tf = image_transforms([0.5] * 3, [0.25] * 3, train=False, img_size=16, random_resized_crop=True)
    assert not any(isinstance(t, RandomResizedCrop) for t in eval_tf.transforms)  # eval sees the whole image
    with pytest.raises(ConfigError, match="two crop augmentations"):
        image_transforms([0.5], [0.5], train=True, crop_padding=2, random_resized_crop=True)


# ---------------------------------------------------------------------------------------------- mixup / CutMix


def partners(targets: torch.Tensor) -> tuple[list[int], list[float]]:
    """For labels y = arange(B): each row's partner index and the weight kept on its own label."""
    own = targets.diagonal().tolist()
    other = targets.clone()
    other.fill_diagonal_(0)
    return [int(j) if other[i, j] > 0 else i for i, j in enumerate(other.argmax(1).tolist())], own


def test_sample_beta_is_torch_distributions_beta_on_our_generator():
    for seed in range(5):
        torch.manual_seed(seed)
        expected = torch.distributions.Beta(0.4, 0.4).sample().item()
        g = torch.Generator().manual_seed(seed)
        assert sample_beta(0.4, g) == pytest.approx(expected, abs=0)
    draws = torch.tensor([sample_beta(2.0, g) for _ in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.var() - 1 / 20) < 0.005  # Beta(2, 2): var 1/(4(2a+1))


def test_mixup_is_a_convex_combination_with_matching_soft_targets():
    B = 12
    x, y = torch.randn(B, 3, 5, 5), torch.arange(B)
    mix = MixUpCutMix(B, mixup_alpha=0.4)
    mixed, targets = mix(x, y, torch.Generator().manual_seed(3))
    assert targets.shape == (B, B) and torch.allclose(targets.sum(1), torch.ones(B))
    partner, own = partners(targets)
    assert len(set(partner)) == B  # a permutation
    lam = [o for o, p, i in zip(own, partner, range(B), strict=True) if p != i][0]
    assert all(o == pytest.approx(lam) for o, p, i in zip(own, partner, range(B), strict=True) if p != i)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])
    again = mix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # seeded: deterministic
    assert not torch.equal(mix(x, y, torch.Generator().manual_seed(4))[0], mixed)


def test_cutmix_lam_is_the_area_kept():
    B, H, W = 10, 16, 12
    x = torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, 2, H, W).clone()  # image i is all i
    mix = MixUpCutMix(B, cutmix_alpha=1.0)
    seen_partial = False
    for seed in range(20):
        mixed, targets = mix(x, torch.arange(B), torch.Generator().manual_seed(seed))
        assert torch.allclose(targets.sum(1), torch.ones(B))
        partner, own = partners(targets)
        for i in range(B):
            pasted = (mixed[i] == partner[i]).float().mean().item() if partner[i] != i else 0.0
            assert set(mixed[i].unique().tolist()) <= {float(i), float(partner[i])}  # pixels are pasted, not blended
            assert own[i] == pytest.approx(1 - pasted, abs=1e-6)
            seen_partial |= 0 < pasted < 1
    assert seen_partial
    top, bottom, left, right = cutmix_box(0.75, 100, 100, torch.Generator().manual_seed(0))
    assert 0 <= top <= bottom <= 100 and 0 <= left <= right <= 100 and (bottom - top) <= 50


def test_mixing_off_switch_and_prob():
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8)
    off = MixUpCutMix(8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    mixed, targets = off(x, y, g)
    assert not off.enabled and mixed is x and torch.equal(targets, torch.eye(8))
    assert torch.equal(g.get_state(), state)  # off draws nothing
    never = MixUpCutMix(8, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)
    assert torch.equal(never(x, y, g)[1], torch.eye(8))
    # switch_prob 1: always CutMix (pixels copied, never blended); 0: always mixup (blended)
    always_cutmix = MixUpCutMix(8, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    always_mixup = MixUpCutMix(8, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0)
    for seed in range(5):
        cut, _ = always_cutmix(x, y, torch.Generator().manual_seed(seed))
        assert bool(torch.isin(cut, x).all())
        blend, t = always_mixup(x, y, torch.Generator().manual_seed(seed))
        assert (t.max(1).values < 1).any() and not bool(torch.isin(blend, x).all())
    with pytest.raises(ConfigError, match="switch_prob"):
        MixUpCutMix(8, mixup_alpha=1.0, switch_prob=1.5)
    with pytest.raises(DataError, match="float image batch"):
        MixUpCutMix(8, mixup_alpha=1.0)(x.to(torch.uint8), y, g)


# ---------------------------------------------------------------------------------------------- label smoothing


def test_label_smoothing_matches_cross_entropy_and_soft_targets():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5)
    x, y = torch.randn(9, 6), torch.randint(0, 5, (9,))
    logits = model(x)
    plain, _ = Classification("image_classification").loss(model, x, y)
    smooth, _ = get_task("image_classification", label_smoothing=0.2).loss(model, x, y)
    torch.testing.assert_close(plain, F.cross_entropy(logits, y))
    torch.testing.assert_close(smooth, F.cross_entropy(logits, y, label_smoothing=0.2))
    assert smooth.item() != pytest.approx(plain.item())
    # soft targets: one-hot probabilities give the same loss; smoothing applies to them as to labels
    onehot = F.one_hot(y, 5).float()
    torch.testing.assert_close(get_task("image_classification", label_smoothing=0.2).loss(model, x, onehot)[0], smooth)
    soft = 0.7 * onehot + 0.3 * F.one_hot(y.roll(1), 5).float()
    expected = -(((1 - 0.2) * soft + 0.2 / 5) * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(get_task("image_classification", label_smoothing=0.2).loss(model, x, soft)[0], expected)
    assert Classification("image_classification").count(x, soft) == 9
    with pytest.raises(ConfigError, match="label_smoothing.*classification"):
        get_task("language_modeling", label_smoothing=0.1)
    assert get_task("image_classification") is not get_task("image_classification")  # no shared state


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("item, fragment", [
    ("train.label_smoothing=1.0", r"label_smoothing=1.0 must be in \[0, 1\)"),
    ("train.mixup=-0.1", "train.mixup=-0.1 must be >= 0"),
    ("train.cutmix=-1", "train.cutmix=-1.0 must be >= 0"),
    ("train.mix_prob=1.5", "train.mix_prob=1.5 must be a probability"),
    ("train.mix_switch_prob=-0.5", "train.mix_switch_prob=-0.5 must be a probability"),
    ("data.rrc_scale=[0.5, 0.1]", r"data.rrc_scale=\[0.5, 0.1\] must be"),
    ("data.rrc_scale=[0, 1]", "data.rrc_scale"),
    ("train.channels_last=maybe", "must be true or false"),
])
def test_new_config_fields_are_validated(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_run_config(None, [item])


def test_new_config_defaults_are_off_and_crops_exclude_each_other():
    cfg = resolve_run_config(None, [])
    assert (cfg.train.label_smoothing, cfg.train.mixup, cfg.train.cutmix, cfg.train.channels_last) == (0, 0, 0, False)
    assert (cfg.train.mix_prob, cfg.train.mix_switch_prob) == (1.0, 0.5)
    assert cfg.data.random_resized_crop is False and cfg.data.rrc_scale == (0.08, 1.0)
    with pytest.raises(ConfigError, match="two crop augmentations"):
        resolve_run_config(None, ["data.crop_padding=2", "data.random_resized_crop=true"])


# ---------------------------------------------------------------------------------------------- trainer

MIXED = ["train.mixup=0.4", "train.cutmix=1.0", "train.label_smoothing=0.1", "train.channels_last=true"]


def test_trainer_with_mixing_smoothing_and_channels_last(tmp_path):
    cfg = make_cfg(tmp_path, "model=cnn_small", "data.batch_size=32", "train.steps=4", "train.eval_every=4",
                   "data.hflip=true", *MIXED)
    with Trainer(cfg) as t:
        convs = [m.weight for m in t.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        seen = []
        real_loss = t.task.loss

        def spy(model, x, y):
            seen.append((tuple(y.shape), y.dtype, x.is_contiguous(memory_format=torch.channels_last)))
            return real_loss(model, x, y)

        t.task.loss = spy
        summary = t.fit()
        assert summary["status"] == "completed" and summary["step"] == 4
        assert seen and all(s == ((32, 10), torch.float32, True) for s in seen)  # soft targets, NHWC inputs
        # evaluation: hard labels and plain cross-entropy, whatever the training objective
        assert t.eval_task is not t.task and t.eval_task.label_smoothing == 0.0
        plain = evaluate_model(t.model, t.data.val, get_task("image_classification"),
                               transform=t.data.eval_transform, batch_size=64)
        assert summary["val"]["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert summary["val"]["accuracy"] == pytest.approx(plain["accuracy"])
        n_val = len(t.data.val)
        assert (summary["val"]["accuracy"] * n_val) == pytest.approx(round(summary["val"]["accuracy"] * n_val))


def test_mixing_is_for_image_classification_only(tmp_path):
    with pytest.raises(ConfigError, match="image classification only.*language_modeling"):
        Trainer(make_cfg(tmp_path, "data.name=pydoc", "data.block_size=16", "model=gpt_mini", "train.mixup=0.2"))


def test_exact_resume_with_mixup_cutmix_and_channels_last(tmp_path):
    overrides = [*RESUME, *MIXED]
    with Trainer(make_cfg(tmp_path / "a", *overrides)) as a:
        assert a.fit()["status"] == "completed"
    straight = weights(a.model)

    class InterruptAt6(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 6:
                os.kill(os.getpid(), signal.SIGINT)

    with Trainer(make_cfg(tmp_path / "b", *overrides), callbacks=[InterruptAt6()]) as b1:
        assert b1.fit()["step"] == 6
    with Trainer(make_cfg(tmp_path / "b", *overrides)) as b2:
        assert b2.step == 6
        b2.fit()
    resumed = weights(b2.model)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # and mixing really changed the run: without it the weights differ
    with Trainer(make_cfg(tmp_path / "c", *RESUME)) as c:
        c.fit()
    assert any(not torch.equal(straight[k], v) for k, v in weights(c.model).items())

