"""``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: torchvision's image classification sets.

The files are read by torchvision's own dataset classes from ``root`` (the usual torchvision layout:
``root/MNIST/raw/train-images-idx3-ubyte`` ..., ``root/cifar-10-batches-py/data_batch_1`` ...) and downloaded
there only when ``download`` is true. 10 % of the training set (fixed, seed 0) becomes the validation split;
only the remaining training subset is augmented. Static sets: a non-empty ``frames`` is a UserError.

Samples are ``(x [C, H, W] float32, y int)``: MNIST-like sets ``[1, 28, 28]`` in [0, 1]; CIFAR ``[3, 32, 32]``
normalised per channel with the mean and std recorded in ``DataSplits.extra["normalization"]``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from rccsnn.data.base import DATASETS, DataSplits, reject_frames, seeded_split

#: fraction of the training set held out for validation (model selection), fixed with seed 0.
VAL_FRACTION = 0.1

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image; lets one loaded set feed two splits.

    Args:
        dataset: map-style dataset of ``(PIL image, label)`` built without a transform.
        indices: the samples of this split (all of them when None).
        transform: image transform, e.g. augmentation for training and plain conversion for evaluation.
    """

    def __init__(self, dataset: Dataset, indices: Optional[Sequence[int]], transform: Callable) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), int(label)


def _build(
    name: str,
    root: str,
    download: bool,
    input_shape: Tuple[int, int, int],
    num_classes: int,
    train_transform: Callable,
    eval_transform: Callable,
    extra: dict,
) -> DataSplits:
    from rccsnn.data.torchvision_sets import CLASSES, open_split

    full_train = open_split(CLASSES[name], name, root, download, train=True)
    test = open_split(CLASSES[name], name, root, download, train=False)
    train_idx, val_idx = seeded_split(len(full_train), (1.0 - VAL_FRACTION, VAL_FRACTION), seed=0)
    return DataSplits(
        name=name,
        train=TransformedSubset(full_train, train_idx.tolist(), train_transform),
        val=TransformedSubset(full_train, val_idx.tolist(), eval_transform),
        test=TransformedSubset(test, None, eval_transform),
        input_shape=input_shape,
        num_classes=num_classes,
        extra={"val_fraction": VAL_FRACTION, "val_seed": 0, **extra},
    )


def _mnist_like(name: str, root: str, download: bool) -> DataSplits:
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    return _build(
        name, root, download, (1, 28, 28), 10, to_tensor, to_tensor,
        extra={"normalization": None, "train_augmentation": []},
    )


def _cifar(name: str, root: str, download: bool, num_classes: int, mean: Tuple[float, ...],
           std: Tuple[float, ...]) -> DataSplits:
    from torchvision import transforms

    normalize = transforms.Normalize(mean, std)
    train_transform = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_transform = transforms.Compose([transforms.ToTensor(), normalize])
    return _build(
        name, root, download, (3, 32, 32), num_classes, train_transform, eval_transform,
        extra={
            "normalization": {"mean": list(mean), "std": list(std)},
            "train_augmentation": ["RandomCrop(32, padding=4)", "RandomHorizontalFlip(p=0.5)"],
        },
    )


@DATASETS.register("mnist")
def mnist(*, root: str = "data", download: bool = False, path: Optional[str] = None,
          frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """MNIST handwritten digits: x ``[1, 28, 28]`` in [0, 1], 10 classes; 54k/6k/10k. ``path`` is unused."""
    reject_frames("mnist", frames)
    return _mnist_like("mnist", root, download)


@DATASETS.register("fashion-mnist")
def fashion_mnist(*, root: str = "data", download: bool = False, path: Optional[str] = None,
                  frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """Fashion-MNIST clothing images: x ``[1, 28, 28]`` in [0, 1], 10 classes; 54k/6k/10k. ``path`` is unused."""
    reject_frames("fashion-mnist", frames)
    return _mnist_like("fashion-mnist", root, download)


@DATASETS.register("cifar10")
def cifar10(*, root: str = "data", download: bool = False, path: Optional[str] = None,
            frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """CIFAR-10: x ``[3, 32, 32]`` normalised, 10 classes; 45k/5k/10k; crop+flip on train. ``path`` is unused."""
    reject_frames("cifar10", frames)
    return _cifar("cifar10", root, download, 10, CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100")
def cifar100(*, root: str = "data", download: bool = False, path: Optional[str] = None,
             frames: Optional[Dict[str, Any]] = None) -> DataSplits:
    """CIFAR-100: x ``[3, 32, 32]`` normalised, 100 classes; 45k/5k/10k; crop+flip on train. ``path`` unused."""
    reject_frames("cifar100", frames)
    return _cifar("cifar100", root, download, 100, CIFAR100_MEAN, CIFAR100_STD)
