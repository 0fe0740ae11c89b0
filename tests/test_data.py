"""Tests for the data layer (experiments.data, .loader, .datasets): loaders, file parsers, errors, determinism."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import pytest
import torch

from sparsetrain.experiments.data import (
    DATASETS,
    InMemoryDataset,
    Loader,
    channel_stats,
    load_dataset,
    random_crop,
    read_idx,
)
from sparsetrain.experiments.datasets import cifar, idx

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: torch.Tensor, magic: int | None = None, compress: bool = False,
              truncate: int = 0) -> Path:
    """Write a uint8 tensor as an idx file (optionally with a wrong magic number)."""
    dims = array.dim()
    if magic is None:
        magic = 0x00000800 | dims
    payload = struct.pack(">I", magic) + struct.pack(f">{dims}I", *array.shape)
    payload += bytes(array.to(torch.uint8).reshape(-1).tolist())
    if truncate:
        payload = payload[:-truncate]
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fake_idx_dir(directory: Path, n_train: int = 20, n_test: int = 10, compress: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte",
                  torch.randint(0, 256, (n, 28, 28), generator=g), compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", torch.arange(n) % 10, compress=compress)


def id_dataset(n: int = 103, c: int = 1, size: int = 6) -> InMemoryDataset:
    """A dataset whose labels are example ids (images encode the id too)."""
    x = (torch.arange(n).view(n, 1, 1, 1) % 256).expand(n, c, size, size).to(torch.uint8).contiguous()
    return InMemoryDataset(x, torch.arange(n), mean=(0.0,) * c, std=(1.0,) * c)


def epoch_batches(loader: Loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


# --------------------------------------------------------------------------- names / errors


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet-9000")
    for name in DATASETS:
        assert name in str(err.value)


def test_unknown_option_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("synthetic", bogus=1)


def test_missing_mnist_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "train-images-idx3-ubyte" in msg and "download=True" in msg


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(idx, "FASHION_MNIST_DIRS", (str(tmp_path / "absent"),))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "mine")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download=True" in msg
    assert str(tmp_path / "mine") in msg


def test_missing_cifar_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar-100", "cifar-100-python")):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset(name, root=tmp_path)
        assert folder in str(err.value) and "tar.gz" in str(err.value)


# --------------------------------------------------------------------------- idx parsing


def test_read_idx_roundtrip_plain_and_gzip(tmp_path):
    arr = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    for compress in (False, True):
        path = write_idx(tmp_path / f"a{compress}-idx3-ubyte", arr, compress=compress)
        out = read_idx(path, ndim=3)
        assert out.dtype == torch.uint8 and torch.equal(out, arr)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = write_idx(tmp_path / "bad-idx3-ubyte", torch.zeros(2, 3, 3), magic=0x12345678)
    with pytest.raises(ValueError, match=r"bad idx magic number 0x12345678"):
        read_idx(path, ndim=3)


def test_read_idx_rejects_wrong_ndim_and_truncation(tmp_path):
    labels = write_idx(tmp_path / "l-idx1-ubyte", torch.arange(5))
    with pytest.raises(ValueError, match="dimensions"):
        read_idx(labels, ndim=3)
    short = write_idx(tmp_path / "s-idx3-ubyte", torch.zeros(2, 3, 3), truncate=4, compress=True)
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(short, ndim=3)


def test_idx_dataset_from_root(tmp_path):
    write_fake_idx_dir(tmp_path / "fm", compress=True)
    train, test, info = load_dataset("fashion-mnist", root=tmp_path / "fm")
    assert (len(train), len(test)) == (20, 10)
    assert train.x.shape == (20, 1, 28, 28) and train.x.dtype == torch.uint8
    assert info["in_channels"] == 1 and info["num_classes"] == 10 and info["image_size"] == 28
    # Un-gzipped files work too, and MNIST reads the same format.
    write_fake_idx_dir(tmp_path / "mn", n_train=7, n_test=3, compress=False)
    train, test, info = load_dataset("MNIST", root=tmp_path / "mn")
    assert (len(train), len(test)) == (7, 3)


def test_idx_dataset_with_corrupt_file_fails_clearly(tmp_path):
    write_fake_idx_dir(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", torch.arange(20), magic=0x00000903)
    with pytest.raises(ValueError, match="magic"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # make sure ./data/fashion-mnist is not picked up
    train, test, info = load_dataset("fashion-mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.x.shape == (60000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert test.y.dtype == torch.long
    for ds in (train, test):
        assert int(ds.y.min()) == 0 and int(ds.y.max()) == 9
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 6000))
    assert info["mean"][0] == pytest.approx(0.2860, abs=1e-3)
    assert info["std"][0] == pytest.approx(0.3530, abs=1e-3)
    assert info["classes"][9] == "Ankle boot"


# --------------------------------------------------------------------------- CIFAR pickles


def write_fake_cifar(root: Path, n_per_batch: int = 4, hundred: bool = False, protocol: int = 2,
                     use_numpy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Write a tiny CIFAR python directory; returns all train images/labels for checking."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    label_key = b"fine_labels" if hundred else b"labels"
    classes = 100 if hundred else 10
    g = torch.Generator().manual_seed(1)
    xs, ys = [], []
    for name in names + ["test"] if hundred else names + ["test_batch"]:
        x = torch.randint(0, 256, (n_per_batch, 3072), dtype=torch.uint8, generator=g)
        y = torch.randint(0, classes, (n_per_batch,), generator=g)
        if use_numpy:
            import numpy as np
            data = np.asarray(x.tolist(), dtype=np.uint8)
        else:
            data = bytes(x.reshape(-1).tolist())
        batch = {b"batch_label": b"fake", b"data": data, label_key: y.tolist(), b"filenames": []}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        if name not in ("test", "test_batch"):
            xs.append(x)
            ys.append(y)
    return torch.cat(xs).reshape(-1, 3, 32, 32), torch.cat(ys)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_fake_batches_without_numpy(tmp_path, monkeypatch, protocol):
    pytest.importorskip("numpy")
    x, y = write_fake_cifar(tmp_path, protocol=protocol)
    # The loader must not need numpy even though the pickles contain numpy arrays.
    monkeypatch.setitem(sys.modules, "numpy", None)
    train, test, info = load_dataset("cifar10", root=tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and train.x.dtype == torch.uint8
    assert torch.equal(train.x, x) and torch.equal(train.y, y)
    assert len(test) == 4
    assert info["in_channels"] == 3 and info["num_classes"] == 10 and info["image_size"] == 32
    assert len(info["mean"]) == 3


def test_cifar100_fake_plain_bytes(tmp_path):
    x, y = write_fake_cifar(tmp_path, n_per_batch=6, hundred=True, use_numpy=False)
    # root may also point at the extracted folder itself.
    train, test, info = load_dataset("cifar100", root=tmp_path / "cifar-100-python")
    assert info["num_classes"] == 100
    assert torch.equal(train.x, x) and torch.equal(train.y, y)


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path):
    write_fake_cifar(tmp_path, use_numpy=False)
    evil = {b"data": bytes(3072), b"labels": [0], b"x": Path("/")}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match="not allowed"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- digits / synthetic


def test_digits_split_is_deterministic():
    pytest.importorskip("sklearn")
    train, test, info = load_dataset("digits")
    train2, test2, _ = load_dataset("digits")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.x.shape[1:] == (1, 8, 8) and info["image_size"] == 8
    assert float(train.x.max()) <= 1.0
    assert torch.equal(train.y, train2.y) and torch.equal(test.x, test2.x)


def test_digits_without_sklearn_names_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_dataset("digits")


def test_synthetic_defaults_and_determinism():
    train, test, info = load_dataset("synthetic")
    assert train.x.shape == (512, 1, 28, 28) and len(test) == 256
    assert info == {**info, "in_channels": 1, "num_classes": 10, "image_size": 28}
    again, _, _ = load_dataset("synthetic")
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    other, _, _ = load_dataset("synthetic", seed=1)
    assert not torch.equal(train.x, other.x)
    small, small_test, info = load_dataset("synthetic", num_train=30, num_test=12, num_classes=3,
                                           channels=3, image_size=16)
    assert small.x.shape == (30, 3, 16, 16) and len(small_test) == 12
    assert set(small.y.tolist()) == {0, 1, 2} and info["num_classes"] == 3


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    train, test, info = load_dataset("synthetic")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = Loader(train, 64, shuffle=True, seed=0)
    losses = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    x, y = next(iter(Loader(test, 256)))
    assert (model(x).argmax(1) == y).float().mean() > 0.8


# --------------------------------------------------------------------------- Loader


def test_loader_len_and_drop_last():
    ds = id_dataset(103)
    assert len(Loader(ds, 10)) == 11
    assert len(Loader(ds, 10, drop_last=True)) == 10
    assert [len(y) for _, y in Loader(ds, 10)][-1] == 3
    assert [len(y) for _, y in Loader(ds, 10, drop_last=True)] == [10] * 10


def test_loader_every_example_once_per_epoch():
    ds = id_dataset(103)
    loader = Loader(ds, 16, shuffle=True, seed=3)
    for epoch in range(3):
        ids = torch.cat([y for _, y in epoch_batches(loader, epoch)])
        assert torch.equal(ids.sort().values, torch.arange(103))


def test_loader_batches_match_labels_and_dtypes():
    ds = id_dataset(50)
    for x, y in Loader(ds, 8, shuffle=True, seed=0, normalize=False):
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert torch.allclose(x[:, 0, 0, 0], y.float() / 255.0)


def test_loader_determinism_per_seed_and_epoch():
    ds = id_dataset(103)
    a = epoch_batches(Loader(ds, 16, shuffle=True, seed=7), 2)
    b = epoch_batches(Loader(ds, 16, shuffle=True, seed=7), 2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other_epoch = epoch_batches(Loader(ds, 16, shuffle=True, seed=7), 3)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other_epoch]))
    other_seed = epoch_batches(Loader(ds, 16, shuffle=True, seed=8), 2)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other_seed]))
    # Without set_epoch the order does not change between iterations.
    loader = Loader(ds, 16, shuffle=True, seed=7)
    assert torch.equal(torch.cat([y for _, y in loader]), torch.cat([y for _, y in loader]))
    assert loader.epoch_seed(2) == 7 * 1000003 + 2


def test_loader_no_shuffle_keeps_order():
    ds = id_dataset(20)
    ids = torch.cat([y for _, y in Loader(ds, 6)])
    assert torch.equal(ids, torch.arange(20))


def test_loader_resume_mid_epoch():
    ds = id_dataset(103)
    full = epoch_batches(Loader(ds, 16, shuffle=True, seed=5, augment=True), 4)
    resumed = Loader(ds, 16, shuffle=True, seed=5, augment=True)
    resumed.set_epoch(4, start_batch=3)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(full[3:], rest))


def test_loader_normalizes_with_dataset_stats():
    train, _, info = load_dataset("synthetic", num_train=200, channels=3, image_size=10)
    x = torch.cat([xb for xb, _ in Loader(train, 64)])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    raw = torch.cat([xb for xb, _ in Loader(train, 64, normalize=False)])
    assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    assert torch.allclose(raw, train.x.float() / 255)


def test_loader_accepts_tensor_dataset_and_float_images():
    x = torch.rand(10, 2, 4, 4)
    loader = Loader(torch.utils.data.TensorDataset(x, torch.arange(10)), 4)
    out = torch.cat([xb for xb, _ in loader])
    assert torch.equal(out, x)  # no stats -> no normalisation, floats used as they are
    loader = Loader(torch.utils.data.TensorDataset(x, torch.arange(10)), 4, mean=(0.5, 0.5), std=(0.25, 0.25))
    assert torch.allclose(torch.cat([xb for xb, _ in loader]), (x - 0.5) / 0.25)


def test_loader_pad_to_32():
    train, _, _ = load_dataset("synthetic", num_train=40, num_test=8)
    loader = Loader(train, 16, pad_to=32, normalize=False)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 32, 32)
    assert torch.equal(x[:, :, 2:30, 2:30], train.x[:16].float() / 255)
    assert x[:, :, :2].abs().sum() == 0 and x[:, :, :, 30:].abs().sum() == 0
    normalized = next(iter(Loader(train, 16, pad_to=32)))[0]
    assert torch.allclose(normalized[:, :, 0, 0], torch.tensor(-train.mean[0] / train.std[0]))


def test_random_crop_is_a_translation():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5) + 1
    out = random_crop(x, torch.tensor([[2, 2], [0, 4]]), padding=2)
    assert torch.equal(out[0], x[0])  # centre offset -> unchanged
    # offset (0, 4) with padding 2: shifted down by 2 and left by 2, zero fill.
    assert torch.equal(out[1, :, 2:, :3], x[1, :, :3, 2:])
    assert out[1, :, :2].abs().sum() == 0 and out[1, :, :, 3:].abs().sum() == 0


@pytest.mark.parametrize("augment", [True, "crop-flip", "crop", "flip"])
def test_augmentation_is_deterministic_and_shape_preserving(augment):
    train, _, _ = load_dataset("synthetic", num_train=64, num_test=8, channels=3, image_size=12)
    a = epoch_batches(Loader(train, 16, shuffle=True, seed=1, augment=augment), 0)
    b = epoch_batches(Loader(train, 16, shuffle=True, seed=1, augment=augment), 0)
    c = epoch_batches(Loader(train, 16, shuffle=True, seed=1, augment=augment), 1)
    plain = epoch_batches(Loader(train, 16, shuffle=True, seed=1), 0)
    assert all(xa.shape == (16, 3, 12, 12) for xa, _ in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    # Same order as without augmentation, but the images changed.
    assert all(torch.equal(ya, yp) for (_, ya), (_, yp) in zip(a, plain))
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_flip_augmentation_flips_about_half():
    train, _, _ = load_dataset("synthetic", num_train=400, num_test=8, image_size=8)
    x_aug, y = next(iter(Loader(train, 400, augment="flip", normalize=False)))
    orig = train.x.float() / 255
    same = (x_aug == orig).flatten(1).all(1)
    flipped = (x_aug == orig.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 120 < int(flipped.sum()) < 280


def test_custom_augment_callable_gets_generator():
    ds = id_dataset(12)
    seen = []

    def aug(x, g):
        seen.append(g.initial_seed())
        return x + torch.rand(1, generator=g)

    a = torch.cat([x for x, _ in Loader(ds, 4, seed=2, augment=aug)])
    b = torch.cat([x for x, _ in Loader(ds, 4, seed=2, augment=aug)])
    assert torch.equal(a, b) and len(set(seen)) == 3


def test_loader_argument_validation():
    ds = id_dataset(10)
    with pytest.raises(ValueError):
        Loader(ds, 0)
    with pytest.raises(ValueError):
        Loader(ds, 4, augment="rotate")
    with pytest.raises(ValueError):
        Loader(ds, 4, pad_to=4)
    with pytest.raises(TypeError):
        Loader([1, 2, 3], 4)


def test_channel_stats_uint8_matches_float():
    x = torch.randint(0, 256, (50, 2, 5, 5), dtype=torch.uint8)
    m8, s8 = channel_stats(x)
    mf, sf = channel_stats(x.double() / 255)
    assert m8 == pytest.approx(mf) and s8 == pytest.approx(sf)
    const_mean, const_std = channel_stats(torch.zeros(3, 1, 2, 2))
    assert const_mean == (0.0,) and const_std == (1.0,)


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_free_unpickler_handles_dtypes_and_layouts(protocol):
    np = pytest.importorskip("numpy")
    import io

    arrays = [np.arange(12, dtype=np.int64).reshape(3, 4),
              np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
              np.arange(6, dtype=">i4").reshape(2, 3)]
    blob = pickle.dumps({"a": arrays, "s": np.int64(7)}, protocol=protocol)
    out = cifar.NumpyFreeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    for got, ref in zip(out["a"], arrays):
        tensor = cifar.as_tensor(got)
        assert tensor.shape == ref.shape
        assert tensor.tolist() == ref.tolist()
    assert out["s"] == 7


def test_download_checks_md5_and_loads(tmp_path, monkeypatch):
    """download=True with a fake server: files land in root, a bad checksum is refused."""
    import contextlib
    import hashlib
    import io

    src = tmp_path / "server"
    write_fake_idx_dir(src, n_train=5, n_test=2, compress=True)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}
    monkeypatch.setitem(idx.DOWNLOADS, "mnist", {"urls": ("http://fake/",), "md5": md5})
    requested = []

    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return contextlib.closing(io.BytesIO(files[url.rsplit("/", 1)[1]]))

    monkeypatch.setattr(idx.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.chdir(tmp_path)
    train, test, _ = load_dataset("mnist", root=tmp_path / "dl", download=True)
    assert (len(train), len(test)) == (5, 2) and len(requested) == 4
    assert not list((tmp_path / "dl").glob("*.part"))

    bad = dict(md5, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    monkeypatch.setitem(idx.DOWNLOADS, "mnist", {"urls": ("http://fake/",), "md5": bad})
    with pytest.raises(OSError, match="checksum mismatch"):
        load_dataset("mnist", root=tmp_path / "dl2", download=True)
    assert not (tmp_path / "dl2" / "t10k-labels-idx1-ubyte.gz").exists()


def test_imagefolder_reads_class_directories(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (10, 12, 3), generator=g, dtype=torch.uint8)
                im = Image.frombytes("RGB", (12, 10), bytes(arr.flatten().tolist()))
                im.save(d / f"{i}.png")
    train, test, info = load_dataset("imagefolder", root=tmp_path)
    assert train.x.shape == (6, 3, 10, 12) and test.x.shape == (4, 3, 10, 12)
    assert info["classes"] == ("cat", "dog") and train.y.tolist() == [0, 0, 0, 1, 1, 1]
    first = Image.open(tmp_path / "train" / "cat" / "0.png")
    assert bytes(train.x[0].permute(1, 2, 0).flatten().tolist()) == first.tobytes()
    small, _, info2 = load_dataset("imagefolder", root=tmp_path, image_size=8, grayscale=True)
    assert small.x.shape == (6, 1, 8, 8) and info2["in_channels"] == 1
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset("imagefolder", root=tmp_path / "nothing")
