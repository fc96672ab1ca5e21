"""Data: IDX and CIFAR readers on small written files, TFDS (mocked), splits,
preprocessing, augmentation and the real Fashion-MNIST of Debian's package."""

import gzip
import os
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tf_sharpest import data
from tf_sharpest.data import CorruptDataError, DataNotFoundError
from tf_sharpest.data import _cifar as cifar
from tf_sharpest.data import _idx as idx

# --------------------------------------------------------------------------- the package

def test_load_is_the_function_and_no_function_shadows_a_submodule():
    import importlib
    import pkgutil

    assert callable(data.load) and data.load is importlib.import_module("tf_sharpest.data._loading").load
    assert data.augment is importlib.import_module("tf_sharpest.data._augmentation").augment
    submodules = {m.name for m in pkgutil.iter_modules(data.__path__)}
    assert {"_loading", "_augmentation"} <= submodules and not submodules & set(data.__all__)
    assert callable(data.load) and callable(data.augment)  # importing the submodules rebinds nothing


# --------------------------------------------------------------------------- helpers

def idx_bytes(arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path, arr, gz=True):
    raw = idx_bytes(arr)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)
    return path


def write_fmnist(directory, n_train=12, n_test=6, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in idx.FASHION_MNIST_FILES.items():
        write_idx(os.path.join(directory, stem + (".gz" if gz else "")), arrays[key], gz=gz)
    return arrays


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"test", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n}


def write_cifar_folder(directory, n=10):
    os.makedirs(directory, exist_ok=True)
    batches = {}
    for i, name in enumerate(cifar.CIFAR10_TRAIN_BATCHES + (cifar.CIFAR10_TEST_BATCH,)):
        batches[name] = cifar_batch(n, i)
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batches[name], f, protocol=2)
    return batches


@pytest.fixture
def small_cifar(monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR10_BATCH_EXAMPLES", 10)
    monkeypatch.setattr(cifar, "CIFAR10_DIRS", [])


@pytest.fixture
def no_system_fmnist(monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DIRS", [])


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = data.read_idx(write_idx(tmp_path / "a", arr, gz=gz), ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_rejects_corrupt_and_truncated(tmp_path):
    arr = np.ones((5, 28, 28), np.uint8)
    raw = idx_bytes(arr)
    cases = {
        "truncated_data": gzip.compress(raw[:-100]),
        "truncated_header": raw[:9],
        "trailing": raw + b"\x00\x01",
        "bad_magic": b"\x08\x03\x00\x00" + raw[4:],
        "truncated_gzip": gzip.compress(raw)[:-40],
        "tiny": b"\x00",
    }
    messages = {"truncated_data": "truncated", "truncated_header": "truncated",
                "trailing": "trailing", "bad_magic": "not an IDX", "truncated_gzip": "cannot be read",
                "tiny": "truncated"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptDataError, match=messages[name]) as info:
            data.read_idx(path, ndim=3)
        assert str(path) in str(info.value)
    with pytest.raises(CorruptDataError, match="1 dimension"):
        data.read_idx(write_idx(tmp_path / "labels", np.zeros(5, np.uint8)), ndim=3)


def test_read_fashion_mnist_small_files(tmp_path):
    arrays = write_fmnist(tmp_path, 12, 6)
    x_train, y_train, x_test, y_test = data.read_fashion_mnist(tmp_path, counts=(12, 6))
    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (6, 28, 28, 1)
    assert np.array_equal(x_train[..., 0], arrays["x_train"])
    assert np.array_equal(y_test, arrays["y_test"]) and y_test.dtype == np.int64
    with pytest.raises(CorruptDataError, match="expected 60000 images"):
        data.read_fashion_mnist(tmp_path)  # the real counts are required by default


def test_read_fashion_mnist_errors_name_the_file(tmp_path):
    write_fmnist(tmp_path, 12, 6)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(11, np.uint8))
    with pytest.raises(CorruptDataError, match="11 labels") as info:
        data.read_fashion_mnist(tmp_path, counts=(12, 6))
    assert str(labels) in str(info.value)
    write_idx(labels, np.full(12, 10, np.uint8))
    with pytest.raises(CorruptDataError, match="outside 0..9"):
        data.read_fashion_mnist(tmp_path, counts=(12, 6))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((6, 32, 32), np.uint8))
    write_idx(labels, np.zeros(12, np.uint8))
    with pytest.raises(CorruptDataError, match="28x28"):
        data.read_fashion_mnist(tmp_path, counts=(12, 6))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.read_fashion_mnist(tmp_path, counts=(12, 6))


def test_load_fashion_mnist_from_idx_files(tmp_path, monkeypatch, no_system_fmnist):
    monkeypatch.setattr(idx, "FASHION_MNIST_COUNTS", (60, 10))
    write_fmnist(tmp_path / "fashion-mnist", 60, 10, gz=False)
    d = data.load("fashion_mnist", data_dir=tmp_path, source="files")
    assert d.name == "fashion_mnist" and d.source == f"files:{tmp_path / 'fashion-mnist'}"
    assert (len(d.x_train), len(d.x_valid), len(d.x_test)) == (50, 10, 10)  # 5:1 as 50k/10k
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64


def test_data_dir_may_start_with_a_tilde(tmp_path, monkeypatch, no_system_fmnist):
    monkeypatch.setattr(idx, "FASHION_MNIST_COUNTS", (60, 10))
    monkeypatch.setenv("HOME", str(tmp_path))
    write_fmnist(tmp_path / "datasets", 60, 10)
    assert data.load("fashion_mnist", data_dir="~/datasets", source="files").source == \
        f"files:{tmp_path / 'datasets'}"


def test_one_name_per_dataset_and_source_the_error_names_them():
    for name in ("fmnist", "fashion-mnist", "Fashion_MNIST", "cifar", "cifar-10", "mnist"):
        with pytest.raises(ValueError, match=f"Unknown dataset '{name}'") as info:
            data.load(name)
        assert "'cifar10' (CIFAR-10) and 'fashion_mnist' (Fashion-MNIST)" in str(info.value)
    for source in ("idx", "cifar_python", "web"):
        with pytest.raises(ValueError, match=f"Unknown source '{source}'.*'files' reads local IDX or CIFAR-10"):
            data.load("fashion_mnist", source=source)
    assert data.SOURCES == ("auto", "files", "tfds") and sorted(data.DATASETS) == ["cifar10", "fashion_mnist"]


def test_corrupt_local_copy_is_an_error_not_a_fallback(tmp_path, monkeypatch, no_system_fmnist):
    monkeypatch.setattr(idx, "FASHION_MNIST_COUNTS", (60, 10))
    write_fmnist(tmp_path, 60, 10)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorruptDataError) as info:
        data.load("fashion_mnist", data_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- CIFAR

def test_read_cifar10_batch_layout(tmp_path):
    batch = cifar_batch(4, 0)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch))
    x, y = data.read_cifar10_batch(path, examples=4)
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8
    planes = batch[b"data"].reshape(4, 3, 32, 32)
    assert np.array_equal(x[2, 5, 7], planes[2, :, 5, 7])  # channel-major rows -> NHWC
    assert np.array_equal(y, batch[b"labels"]) and y.dtype == np.int64


def test_read_cifar10_batch_rejects_bad_files(tmp_path):
    good = pickle.dumps(cifar_batch(4, 0), protocol=2)
    no_labels = cifar_batch(4, 0)
    del no_labels[b"labels"]
    wrong_width = cifar_batch(4, 0)
    wrong_width[b"data"] = wrong_width[b"data"][:, :100]
    bad_label = cifar_batch(4, 0)
    bad_label[b"labels"][1] = 12

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    cases = {
        "truncated": (good[: len(good) // 2], "truncated or corrupt"),
        "garbage": (b"\x00not a pickle at all", "truncated or corrupt"),
        "no_labels": (pickle.dumps(no_labels), "lacks key"),
        "wrong_width": (pickle.dumps(wrong_width), "3072"),
        "bad_label": (pickle.dumps(bad_label), "outside 0..9"),
        "short": (good, "expected 10000 examples"),
        "evil": (pickle.dumps({b"data": Evil()}), "refusing to unpickle"),
        "not_a_dict": (pickle.dumps([1, 2]), "dict"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptDataError, match=message) as info:
            if name == "short":
                data.read_cifar10_batch(path)  # the real size is required by default
            else:
                data.read_cifar10_batch(path, examples=4)
        assert str(path) in str(info.value)


def test_read_cifar10_folder_and_tarball(tmp_path, small_cifar):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder)
    x_train, y_train, x_test, y_test = data.read_cifar10(folder)
    assert x_train.shape == (50, 32, 32, 3) and x_test.shape == (10, 32, 32, 3)
    assert np.array_equal(y_train[10:20], batches["data_batch_2"][b"labels"])

    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_tar = data.read_cifar10(tarball)
    for a, b in zip(from_tar, (x_train, y_train, x_test, y_test)):
        assert np.array_equal(a, b)

    truncated = tmp_path / "cut" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(CorruptDataError) as info:
        data.read_cifar10(truncated)
    assert str(truncated) in str(info.value)

    os.remove(folder / "data_batch_4")
    with pytest.raises(DataNotFoundError, match="data_batch_4"):
        data.read_cifar10(folder)


def test_load_cifar10_from_files(tmp_path, small_cifar):
    write_cifar_folder(tmp_path / "cifar-10-batches-py")
    for source in ("auto", "files"):
        d = data.load("cifar10", data_dir=tmp_path, source=source, download=False)
        assert d.name == "cifar10" and d.source.startswith("files:")
        assert (len(d.x_train), len(d.x_valid), len(d.x_test)) == (45, 5, 10)  # 9:1 as 45k/5k
        assert d.input_shape == (32, 32, 3)


def test_keras_cache_of_cifar10_is_searched(tmp_path, monkeypatch):
    # keras.datasets.cifar10.load_data() (Keras 3.8 to 3.15) extracts the tarball into
    # <KERAS_HOME>/datasets/cifar-10-batches-py-target/cifar-10-batches-py.
    keras_datasets = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets")
    folder = os.path.join(keras_datasets, "cifar-10-batches-py-target", "cifar-10-batches-py")
    assert folder in cifar.cifar10_places(tmp_path)
    monkeypatch.setattr(cifar, "CIFAR10_BATCH_EXAMPLES", 10)
    monkeypatch.setattr(cifar, "CIFAR10_DIRS", [str(tmp_path / "datasets"),
                                                str(tmp_path / "datasets" / "cifar-10-batches-py-target")])
    write_cifar_folder(tmp_path / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py")
    d = data.load("cifar10", source="files")
    assert d.source == f"files:{tmp_path / 'datasets' / 'cifar-10-batches-py-target' / 'cifar-10-batches-py'}"


def test_not_found_error_names_each_place(tmp_path, small_cifar):
    with pytest.raises(DataNotFoundError) as info:
        data.load("cifar10", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "tensorflow_datasets" in msg and str(tmp_path) in msg
    for place in cifar.cifar10_places(tmp_path):
        assert place in msg
    assert "download=False" in msg
    assert "cifar-10-python.tar.gz" in msg and "How to get CIFAR-10" in msg
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", data_dir=tmp_path, source="files")


def test_not_found_error_fashion_mnist(tmp_path, no_system_fmnist):
    with pytest.raises(DataNotFoundError) as info:
        data.load("fashion_mnist", data_dir=tmp_path, source="files")
    msg = str(info.value)
    assert str(tmp_path / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


# --------------------------------------------------------------------------- TFDS

def test_tfds_source_with_mock_data(tmp_path, no_system_fmnist):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        d = data.load("cifar10", source="tfds", data_dir=tmp_path, download=False)
        assert d.source.startswith("tfds:cifar10")
        assert d.x_train.shape == (18, 32, 32, 3) and d.x_valid.shape == (2, 32, 32, 3)
        assert d.x_test.shape == (20, 32, 32, 3)
        assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int64
        assert set(np.unique(d.y_train)) <= set(range(10))
        f = data.load("fashion_mnist", data_dir=tmp_path, download=False)  # auto: no local files, then TFDS
        assert f.source.startswith("tfds:fashion_mnist")
        assert f.x_train.shape == (17, 28, 28, 1) and f.x_valid.shape == (3, 28, 28, 1)


def test_auto_reads_local_files_without_asking_tfds(tmp_path, monkeypatch, no_system_fmnist):
    from tf_sharpest.data import _loading as loading

    asked = []

    def tfds(*args):
        asked.append(args)
        raise AssertionError("TFDS asked although local files exist")

    monkeypatch.setattr(loading, "_tfds", tfds)
    monkeypatch.setattr(idx, "FASHION_MNIST_COUNTS", (60, 10))
    write_fmnist(tmp_path, 60, 10)
    d = data.load("fashion_mnist", data_dir=tmp_path)  # auto, download allowed
    assert d.source == f"files:{tmp_path}" and asked == []
    assert (len(d.x_train), len(d.x_valid), len(d.x_test)) == (50, 10, 10)


def test_auto_asks_tfds_quietly_when_there_are_no_local_files(tmp_path, caplog, no_system_fmnist):
    pytest.importorskip("tensorflow_datasets")
    import logging

    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    with caplog.at_level(logging.INFO, logger="absl"):
        with pytest.raises(DataNotFoundError) as info:
            data.load("fashion_mnist", data_dir=tmp_path / "tfds", download=False)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "dataset_info.json" not in logged and "Constructing tf.data.Dataset" not in logged
    assert absl_logging.get_verbosity() == verbosity  # restored
    message = str(info.value)
    # Local files are named first, then the TFDS copy, then the skipped download.
    assert message.index(str(tmp_path / "tfds" / "fashion-mnist")) < message.index(
        f"tensorflow_datasets 'fashion_mnist' in {tmp_path / 'tfds'} (download=False)") < message.index(
        "skipped (download=False)")


def test_tfds_attempts_per_source(tmp_path, monkeypatch, small_cifar):
    pytest.importorskip("tensorflow_datasets")
    from tf_sharpest.data import _loading as loading

    attempts = []

    def tfds(module, name, data_dir, download, tried):
        attempts.append(download)
        tried.append(f"tfds attempt download={download}")

    monkeypatch.setattr(loading, "_tfds", tfds)
    expected = {("auto", True): [False, True], ("auto", False): [False],  # a prepared copy before a download
                ("tfds", True): [True], ("tfds", False): [False], ("files", True): []}
    for (source, download), asked in expected.items():
        attempts.clear()
        with pytest.raises(DataNotFoundError) as info:
            data.load("cifar10", data_dir=tmp_path, source=source, download=download)
        assert attempts == asked, (source, download)
        assert ("python batches or tarball in" in str(info.value)) == (source != "tfds")  # files looked for


def test_without_tensorflow_datasets_the_error_says_how_to_install_it(tmp_path, monkeypatch, small_cifar):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(DataNotFoundError, match="tensorflow_datasets: not installed") as info:
        data.load("cifar10", data_dir=tmp_path)
    assert 'pip install "tf_sharpest[zoo]"' in str(info.value)
    with pytest.raises(ImportError, match="source='tfds' needs tensorflow_datasets: pip install"):
        data.load("cifar10", data_dir=tmp_path, source="tfds")
    write_cifar_folder(tmp_path)
    assert data.load("cifar10", data_dir=tmp_path).source == f"files:{tmp_path}"  # local files need no TFDS


# --------------------------------------------------------------------------- splits, preprocessing

def test_split_sizes_and_determinism():
    tr, va = data.split_train_valid(50000, 5000, 777)
    assert len(tr) == 45000 and len(va) == 5000
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(50000))
    tr2, va2 = data.split_train_valid(50000, 5000, 777)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, _ = data.split_train_valid(50000, 5000, 778)
    assert not np.array_equal(tr, tr3)
    # the paper's code: RandomState(seed).choice(n, n, replace=False), first part trains
    perm = np.random.RandomState(777).choice(50000, 50000, replace=False)
    assert np.array_equal(tr, perm[:45000])
    with pytest.raises(ValueError):
        data.split_train_valid(10, 10, 0)


def test_load_is_deterministic_per_seed(tmp_path, small_cifar):
    write_cifar_folder(tmp_path)
    a = data.load("cifar10", data_dir=tmp_path, source="files", data_seed=1)
    b = data.load("cifar10", data_dir=tmp_path, source="files", data_seed=1)
    c = data.load("cifar10", data_dir=tmp_path, source="files", data_seed=2)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    assert not np.array_equal(a.valid_indices, c.valid_indices)
    x_train, y_train, x_valid, y_valid, x_test, y_test = a  # unpacks as a 6-tuple
    assert len(x_train) == len(y_train) == 45


def test_center_preprocessing_uses_training_statistics(tmp_path, small_cifar):
    write_cifar_folder(tmp_path)
    raw = data.read_cifar10(tmp_path)
    d = data.load("cifar10", data_dir=tmp_path, source="files", n_valid=10)
    train_raw = raw[0][d.train_indices].astype(np.float64)
    mean, std = train_raw.mean(axis=0, keepdims=True), train_raw.std()
    np.testing.assert_allclose(d.mean, mean, rtol=1e-6)
    assert d.std == pytest.approx(std, rel=1e-6)
    np.testing.assert_allclose(d.x_valid, (raw[0][d.valid_indices] - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (raw[2] - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.y_valid, raw[1][d.valid_indices])
    unit = data.load("cifar10", data_dir=tmp_path, source="files", preprocessing="01")
    assert unit.x_train.max() <= 1.0 and unit.mean is None
    with pytest.raises(ValueError, match="center"):
        data.load("cifar10", data_dir=tmp_path, source="files", preprocessing="whiten")


# --------------------------------------------------------------------------- augmentation

def test_augment_shapes_dtypes_and_seeds():
    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
    a = data.augment(x, [1, 2]).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    assert np.array_equal(a, data.augment(x, [1, 2]).numpy())
    assert not np.allclose(a, data.augment(x, [1, 3]).numpy())
    flips = data.augment(x, [5, 6], shift=0.0).numpy()
    for img, out in zip(x, flips):  # no shift: each image is itself or its mirror
        assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
    assert any(np.array_equal(o, i[:, ::-1]) for o, i in zip(flips, x))
    # integer shifts of up to 0.125 * 32 = 4 pixels, the border filled by the nearest pixel
    ramp = np.tile(np.arange(32, dtype=np.float32), (8, 32, 1))[..., None]
    shifted = data.augment(ramp, [0, 1], flip=False, interpolation="nearest").numpy()
    offsets = shifted[:, 16, 16, 0] - 16
    assert np.all(np.abs(offsets) <= 4) and len(set(offsets.tolist())) > 1
    assert np.all(np.diff(shifted[:, 16, :, 0], axis=1) >= 0)  # nearest fill: no wrap, no zeros
    with pytest.raises(ValueError):
        data.augment(x, [0, 0], shift=1.5)


def test_train_dataset_pipeline():
    n = 70
    labels = np.arange(n) % 10
    x = np.broadcast_to(labels[:, None, None, None], (n, 28, 28, 1)).astype(np.float32)
    ds = data.train_dataset(x, labels, batch_size=32, seed=3)
    batches = list(ds)
    assert [len(b[1]) for b in batches] == [32, 32, 6]
    xb, yb = batches[0]
    assert xb.shape == (32, 28, 28, 1) and xb.dtype == tf.float32 and yb.dtype == tf.int64
    # constant images stay constant: images and labels stay aligned after shuffling
    for xb, yb in batches:
        assert np.array_equal(xb.numpy()[:, 0, 0, 0], yb.numpy().astype(np.float32))
    assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == sorted(labels.tolist())

    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
    ys = np.arange(64)
    first = lambda ds: next(iter(ds))  # noqa: E731
    a = first(data.train_dataset(imgs, ys, 16, seed=5))
    b = first(data.train_dataset(imgs, ys, 16, seed=5))
    c = first(data.train_dataset(imgs, ys, 16, seed=6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    ds = data.train_dataset(imgs, ys, 16, seed=5)
    assert not np.array_equal(first(ds)[0], first(ds)[0])  # new epoch: new shuffle and shifts
    plain = list(data.eval_dataset(imgs, ys, 40))
    assert np.array_equal(np.concatenate([p[0] for p in plain]), imgs)
    kept = first(data.train_dataset(imgs, ys, 16, augment=False, shuffle=False))
    assert np.array_equal(kept[0], imgs[:16])


# --------------------------------------------------------------------------- real data

@pytest.mark.needs_fmnist
def test_real_fashion_mnist_from_debian_files():
    d = data.load("fashion_mnist", source="files")
    assert d.source.startswith("files:")
    assert d.x_train.shape == (50000, 28, 28, 1)
    assert d.x_valid.shape == (10000, 28, 28, 1)
    assert d.x_test.shape == (10000, 28, 28, 1)
    assert len(d.x_train) + len(d.x_valid) == 60000
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.array_equal(np.bincount(np.concatenate([d.y_train, d.y_valid])), [6000] * 10)
    assert np.array_equal(np.bincount(d.y_test), [1000] * 10)
    assert abs(float(d.x_train.mean())) < 1e-3
    assert d.std == pytest.approx(90.0, abs=1.0)
    again = data.load("fashion_mnist", source="files", data_seed=777)
    assert np.array_equal(again.valid_indices, d.valid_indices)
