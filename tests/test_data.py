import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.engine.data import ArraySplit, DeviceLoader, load_dataset, make_synthetic, open_loaders
from bench.core.errors import UserError
from conftest import shared_cifar10


def _fake_cifar10_raw(raw, n_per_batch=20):
    """Write the pickled batches that torchvision's CIFAR10 reads, with known pixels and labels."""
    folder = raw / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=n_per_batch))
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return batches


def test_cifar_download_is_converted_once_to_npz(tmp_path, monkeypatch):
    from torchvision import datasets
    from torchvision.datasets import cifar

    batches = _fake_cifar10_raw(tmp_path / "raw")
    # the real torchvision code runs; only the md5 check (which would trigger the network download) is replaced
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    ds = load_dataset("cifar10", root=tmp_path)
    assert (tmp_path / "cifar10" / "train.npz").is_file() and (tmp_path / "cifar10" / "test.npz").is_file()
    assert ds.train.x.shape == (100, 32, 32, 3) and ds.train.x.dtype == np.uint8
    assert ds.test.y.dtype == np.int64 and list(ds.test.y) == batches["test_batch"][1]
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32).transpose(1, 2, 0)  # CHW rows -> HWC
    assert np.array_equal(ds.train.x[0], first)
    assert not (tmp_path / "raw" / "cifar-10-batches-py").exists()  # raw files removed after conversion

    def no_download(*a, **k):
        raise AssertionError("second load must not download")
    monkeypatch.setattr(datasets.CIFAR10, "__init__", no_download)
    assert np.array_equal(load_dataset("cifar10", root=tmp_path).train.x, ds.train.x)


def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(self, *a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(datasets.CIFAR10, "__init__", offline)
    with pytest.raises(UserError, match=r"cifar10 is not in .* could not be downloaded.*set DATA_DIR"):
        load_dataset("cifar10", root=tmp_path)
    assert not (tmp_path / "cifar10").exists()


def test_corrupt_npz_and_unknown_dataset(tmp_path):
    (tmp_path / "cifar10").mkdir()
    for split in ("train", "test"):
        (tmp_path / "cifar10" / f"{split}.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(UserError, match="did you mean cifar10"):
        load_dataset("cifar1O", root=tmp_path)


def test_subset_is_class_balanced():
    y = np.repeat(np.arange(3), [5, 7, 9])
    split = ArraySplit(np.zeros((len(y), 4, 4, 3), np.uint8), y).subset_per_class(4)
    assert np.bincount(split.y).tolist() == [4, 4, 4]


def test_device_loader_augmentation_is_a_padded_crop_and_flip():
    x = np.random.default_rng(0).integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    split = ArraySplit(x, np.zeros(64, dtype=np.int64))
    loader = DeviceLoader(split, (0, 0, 0), (1 / 255,) * 3, batch_size=64, train=True, pad=2, seed=1, channels_last=False)
    xb = loader._augment(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    padded = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        plain = any(torch.equal(xb[i], w) for w in windows)
        flipped = any(torch.equal(xb[i], w.flip(2)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half are flipped


def test_device_loader_normalises_and_covers_the_set(synthetic):
    loader = DeviceLoader(synthetic.test, synthetic.mean, synthetic.std, batch_size=64)
    xs, ys = zip(*loader)
    x = torch.cat(xs)
    assert len(x) == len(synthetic.test.y) and x.is_contiguous(memory_format=torch.channels_last)
    assert x.mean().abs() < 0.2 and 0.7 < x.std() < 1.3
    assert torch.equal(torch.cat(ys), torch.from_numpy(synthetic.test.y))


def test_synthetic_is_deterministic_and_balanced():
    a, b = make_synthetic(), make_synthetic()
    assert np.array_equal(a.train.x, b.train.x)
    assert np.bincount(a.train.y).tolist() == [100] * 10


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    loaders = open_loaders(f"imagefolder:{tmp_path}", batch_size=4, device=torch.device("cpu"), model="resnet18")
    x, y = next(iter(loaders.test))
    assert loaders.num_classes == 2 and x.shape == (4, 3, 224, 224) and loaders.input_size == (3, 224, 224)
    cifar = open_loaders(f"imagefolder:{tmp_path}", batch_size=4, device=torch.device("cpu"), model="resnet20")
    assert next(iter(cifar.train))[0].shape == (4, 3, 32, 32) and cifar.input_size == (3, 32, 32)  # the model's size
    with pytest.raises(UserError, match="does not exist"):
        open_loaders(f"imagefolder:{tmp_path / 'nope'}", batch_size=4, device=torch.device("cpu"), model="resnet18")


@pytest.mark.skipif(shared_cifar10() is None, reason="no CIFAR-10 copy in DATA_DIR or ../shared/data")
def test_shared_cifar10_loads():
    ds = load_dataset("cifar10", root=shared_cifar10())
    assert ds.train.x.shape == (50000, 32, 32, 3) and ds.test.x.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.test.y).tolist() == [1000] * 10
