"""LightningDataModules. Images travel as uint8 and are augmented as whole batches on the device; the
classifier normalizes them (tinyvision.preprocessing), so its checkpoint carries its own input definition."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tinyvision import image_folders
from tinyvision.data import sources
from tinyvision.data.augment import AugmentSettings, mix_batch, padding_ltrb
from tinyvision.data.batches import IndexSampler, TensorBatches
from tinyvision.data.folds import stratified_folds
from tinyvision.errors import ConfigError
from tinyvision.preprocessing import InputDefinition, as_hw
from tinyvision.schema import ConfigValueError, PositiveInt, Section, instantiate, one_of, show, spec

log = logging.getLogger("tinyvision")

# The largest image side accepted: one batch of 64 colour 4096×4096 images is 3.2 GB as uint8 and 12.9 GB as the
# float input of the first layer, before any activation; larger sides are a typo (100000) or need tiling, not resizing.
MAX_IMAGE_SIDE = 4096
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]



class ImageDataModule(L.LightningDataModule):
    """What every dataset shares: its shape, batched augmentation and validation split."""

    def __init__(
        self,
        channels: int,
        image_size: int | Sequence[int],
        num_classes: int,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        val_size: float | int = 0.1,
        train_size: float | int | None = None,
        seed: int = 42,
        augment: dict[str, Any] | None = None,
        test_every_epoch: bool = False,
        folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__()
        self.test_every_epoch = test_every_epoch
        self.channels, self.num_classes = channels, num_classes
        self.image_size = image_size if isinstance(image_size, int) else tuple(image_size)
        self.hw = as_hw(image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.train_size, self.seed = val_size, train_size, seed
        self.folds, self.fold = folds, fold  # k-fold cross-validation: fold ``fold`` of ``folds`` validates
        # Not strict: a config's values are checked before (tinyvision.config), a Python caller may give a tuple
        self.augment = AugmentSettings.model_validate(augment or {}, strict=False)
        self._augment_steps = self.augment.image_steps()  # built once, run on every training batch
        self.class_names: list[str] = [str(i) for i in range(num_classes)]
        # The whole training split before it is carved, and where each split's rows came from in it: what a k-fold
        # job's held-out probabilities are keyed by, and what the data audit reads images from (tinyvision.audit).
        self.pool: tuple[Tensor, Tensor] | None = None  # uint8 images and labels; None when not held (a streamed folder)
        self.pool_keys: list[str] | None = None  # a folder's file paths (relative to its train/); None: the index is the key
        self.split_index: dict[str, Tensor] = {}

    def carve(self, count: int, what: str, generator: torch.Generator, test_size: float | int | None = None,
              labels: Tensor | None = None) -> dict[str, Tensor]:
        """The indices of each split among ``count`` images, drawn with ``generator``: with ``test_size`` (a folder
        without a test/ subfolder) that many for the test first; then for validation ``val_size`` of the rest, or with
        ``folds`` the rest's fold number ``fold`` (stratified by ``labels``, tinyvision.data.folds); and ``train_size``
        of what remains (all of it when null) for training."""
        splits, rest = {}, torch.arange(count)
        if test_size is not None:
            test_count = round(test_size * count) if isinstance(test_size, float) else test_size
            order = torch.randperm(count, generator=generator)
            splits["test"], rest = order[:test_count], order[test_count:]
        if self.folds is not None:
            if len(rest) < self.folds:
                raise ConfigError(f"data.folds={self.folds} does not fit the training split of {what} ({len(rest)} images): "
                                  f"use from 2 to {len(rest)} folds")
            fold_of = stratified_folds(labels[rest] if labels is not None else torch.zeros(len(rest)), self.folds, generator)
            splits["val"], train = rest[fold_of == self.fold], rest[fold_of != self.fold]
            rest_name = f"{what} less fold {self.fold} of data.folds={self.folds}"
        else:
            val_count = self._count("val_size", self.val_size, len(rest), what)
            order = torch.randperm(len(rest), generator=generator)
            splits["val"], train = rest[order[:val_count]], rest[order[val_count:]]
            rest_name = f"{what} less data.val_size"
        if self.train_size is not None:
            train_count = self._count("train_size", self.train_size, len(train), rest_name, upto=True)
            train = train[torch.randperm(len(train), generator=generator)[:train_count]]
        splits["train"] = train
        return splits

    @staticmethod
    def _count(key: str, size: float | int, available: int, what: str, upto: bool = False) -> int:
        """A size as a count of images, checked against what it is carved from (``upto``: may take all)."""
        count = max(1, round(size * available)) if isinstance(size, float) and 0 < size <= 1 else size
        largest = available if upto else available - 1
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= largest:
            raise ConfigError(
                f"data.{key}={size} does not fit the training split of {what} ({available} images): "
                f"use a count from 1 to {largest} or a fraction between 0 and 1 such as 0.1"
            )
        return count

    def augment_batch(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        for step in self._augment_steps:
            images = step(images, generator=generator)
        return images

    def _loader(self, split: str, shuffle: bool):
        raise NotImplementedError

    def train_batches_per_epoch(self) -> int:
        """How many training batches this rank draws an epoch, without handing out a loader to Lightning."""
        return len(self._loader("train", shuffle=True))

    def train_dataloader(self):
        return self._loader("train", shuffle=self._shuffles_training())

    def _shuffles_training(self) -> bool:
        """Shuffled, except under trainer.overfit_batches (debug=overfit): the same first batches every epoch.
        Lightning turns off the shuffling of a DataLoader's sampler itself; tinyvision's batches are not one."""
        return not (self.trainer is not None and self.trainer.overfit_batches)

    def val_dataloader(self):
        """The validation split, followed by the test split when ``test_every_epoch`` (for accuracy curves)."""
        if self.test_every_epoch:
            return [self._loader("val", shuffle=False), self._loader("test", shuffle=False)]
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, (list, tuple)):
            return batch  # the model's example input (for the TensorBoard graph), already a float tensor
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = self.augment_batch(images, self._augment_generator())
            if self.augment.mixes:
                # Keyed by the batch's number in the whole run, which Lightning restores on resume. Its loop's progress
                # counters are the only count of batches (global_step counts optimizer steps); the resume tests pin them.
                batch_number = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
                images, labels = mix_batch(images, labels, self.num_classes, self.augment.mixup_alpha, self.augment.cutmix_alpha,
                                           (self.seed, self._rank()[0], batch_number))
        return images, labels  # still uint8: the classifier normalizes

    def _augment_generator(self) -> torch.Generator | None:
        return None

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size


class TensorDataModule(ImageDataModule):
    """MNIST, Fashion-MNIST, KMNIST, EMNIST, CIFAR-10, CIFAR-100 and SVHN: each split decoded once into a uint8
    tensor held in memory.

    The tensors live on the training device when it is a GPU; batches are drawn by index, so there is
    no per-image Python, PIL or transform call in the training loop. Channels and size are converted
    once at load time when the config asks for other than the files hold (``data.channels=3`` on
    Fashion-MNIST, ``data.image_size=32``).
    """

    def __init__(self, dataset: str, root: str, mirrors: Sequence[str] = (), download: bool = True, split: str | None = None,
                 label_type: str = "fine", **kwargs):
        super().__init__(**kwargs)
        self.dataset, self.root, self.mirrors, self.download = dataset, root, list(mirrors), download
        self.split, self.label_type = split, label_type  # EMNIST's split; CIFAR-100's fine or coarse labels
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._train_batches: TensorBatches | None = None

    def prepare_data(self) -> None:
        # Runs on one process only: fetches and extracts files, so ranks never download at once.
        sources.fetch(self.dataset, self.root, self.mirrors, self.download, self.split)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = sources.load(self.dataset, self.root, self.mirrors, download=False, split=self.split, label_type=self.label_type)
        if len(data.classes) != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.dataset} has {len(data.classes)} classes: "
                f"set data.num_classes={len(data.classes)}"
            )
        self.class_names = data.classes
        train_images, train_labels = self._adapt(data.train[0]), data.train[1]
        index = self.carve(len(train_images), self.dataset, torch.Generator().manual_seed(self.seed), labels=train_labels)
        self.pool, self.split_index = (train_images, train_labels), index
        device = self._device()
        self.splits = {split: (train_images[index[split]].to(device), train_labels[index[split]].to(device))
                       for split in ("train", "val")}
        self.splits["test"] = (self._adapt(data.test[0]).to(device), data.test[1].to(device))

    def _device(self) -> torch.device:
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _adapt(self, images: Tensor) -> Tensor:
        """Convert channels and size once, on the whole split."""
        if images.shape[1] != self.channels:
            if self.channels == 1:
                images = TF.rgb_to_grayscale(images)
            elif images.shape[1] == 1:
                images = images.expand(-1, self.channels, -1, -1).contiguous()
            else:
                raise ConfigError(
                    f"data.channels={self.channels} cannot be made from {images.shape[1]}-channel images: use 1 or 3"
                )
        if tuple(images.shape[-2:]) != self.hw:
            images = TF.resize(images, list(self.hw), antialias=True)
        return images.contiguous()

    def _loader(self, split: str, shuffle: bool) -> TensorBatches:
        images, labels = self.splits[split]
        rank, world_size = self._rank()
        sampler = IndexSampler(len(images), shuffle, self.seed, rank, world_size, even=shuffle)
        return TensorBatches(images, labels, self.batch_size if shuffle else self.eval_batch_size, sampler)

    def train_dataloader(self):
        loader = self._loader("train", shuffle=self._shuffles_training())
        if isinstance(loader, TensorBatches):  # resumable mid-epoch, and the augmentation's generator
            loader.progress = self._train_progress
            self._train_batches = loader
        return loader

    def _train_progress(self) -> tuple[int, bool]:
        # Checkpoints are written after a batch's step: it counts as trained (Lightning resumes after it).
        if self.trainer is None:
            return 0, False
        trained = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return trained, trained >= self.trainer.num_training_batches

    def _augment_generator(self) -> torch.Generator | None:
        return self._train_batches.generator if self._train_batches is not None else None  # TensorBatches' only


class FolderDataModule(TensorDataModule):
    """Any directory of images with one subfolder per class (seed 003's ants/bees).

    With ``train/`` and ``test/`` subdirectories those are the splits; otherwise the test split is
    carved from the whole folder (``test_size``). The images are decoded once, resized and converted,
    into a uint8 tensor file under ``cache_dir`` (tinyvision.data.folder_cache) and then train through
    the same device-resident, batch-augmented, resumable path as MNIST or CIFAR. When the decoded set
    would not fit ``cache_max_gb`` (default: half the training device's free memory), they are decoded per
    image in DataLoader workers instead, with the same transforms. Unreadable images are listed and
    skipped (``skip_bad_images=false`` refuses them instead).
    """

    def __init__(self, root: str, test_size: float | int = 0.2, num_workers: int = 2, cache_max_gb: float | None = None,
                 skip_bad_images: bool = True, cache_dir: str = "data/cache", model_classes: list[str] | None = None,
                 **kwargs):
        super().__init__(dataset="folder", root=str(root), **kwargs)
        # a trained model's classes (eval.py on a folder): the class map, instead of the folder's train/
        self.model_classes = list(model_classes) if model_classes else None
        self.root, self.test_size, self.num_workers = Path(root), test_size, num_workers
        self.cache_max_gb, self.skip_bad_images, self.cache_dir = cache_max_gb, skip_bad_images, Path(cache_dir)
        self.streamed: StreamedFolder | None = None  # the per-image path, when the decoded folder does not fit the cache
        self.skipped: list[tuple[str, str]] = []

    def prepare_data(self) -> None:
        self.check_folder()

    def check_folder(self) -> list[str]:
        """The class folders' names (as the file system has them: image_folders.shown for the class names), from the
        training split's class folders (the one class map of every split); fails early,
        naming the folder, when the directory is missing, a training class has no images, or the test split has a
        class that training lacks (its images could only be scored as some other class)."""
        if not self.root.is_dir():
            raise ConfigError(
                f"data.root={self.root} does not exist: point data.root at a directory with one subfolder "
                "of images per class (optionally inside train/ and test/)"
            )
        roots = image_folders.split_roots(self.root)
        if self.model_classes is not None:
            self._refuse_unknown_classes(roots, self.model_classes, "the checkpoint's model")
            found = {image_folders.shown(name): name for root in roots.values() for name in image_folders.class_folders(root)}
            return [found.get(name, name) for name in self.model_classes]  # each class's folder, by its shown name
        classes = image_folders.class_folders(roots["train"])
        if not classes:
            raise ConfigError(f"data.root={roots['train']} has no class subfolders: put the images of each class in a subfolder")
        for name in classes:
            if not image_folders.holds_an_image(roots["train"] / name):
                raise ConfigError(
                    f"class folder {roots['train'] / name} holds no images (allowed: {', '.join(image_folders.IMAGE_SUFFIXES)}): "
                    "add images or remove the folder"
                )
        if "test" in roots:
            self._refuse_unknown_classes({"test": roots["test"]}, classes, "train/")
        if len(classes) != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.root} has {len(classes)} class folders: "
                f"set data.num_classes={len(classes)}, or leave it out (data.num_classes=null counts the class folders)"
            )
        return classes

    def _refuse_unknown_classes(self, roots: dict[str, Path], classes: list[str], source: str) -> None:
        """Images of a class that ``classes`` lacks could only be scored as some other class: refused."""
        for split, root in roots.items():
            known = {image_folders.shown(name) for name in classes}
            unknown = [image_folders.shown(name) for name in image_folders.class_folders(root)
                       if image_folders.shown(name) not in known]
            if unknown:
                place = f"{split}/" if root != self.root else "it"
                raise ConfigError(
                    f"data.root={self.root}: {place} has class folders that {source} lacks ({', '.join(unknown)}; "
                    f"{source} has {', '.join(sorted(known))}): a class needs training images to be predicted; "
                    + (f"add train/{unknown[0]} or move {split}/{unknown[0]} out" if source == "train/"
                       else f"move {unknown[0]}/ out, or evaluate with a model trained on it")
                )

    @property
    def cached(self) -> bool:
        return bool(self.splits)

    def setup(self, stage: str | None = None) -> None:
        if self.splits or self.streamed is not None:
            return
        from tinyvision.data import folder_cache

        folders = self.check_folder()  # the class folders' names, as the file system has them
        self.class_names = [image_folders.shown(name) for name in folders]
        roots = image_folders.split_roots(self.root)
        samples = {split: image_folders.image_files(root, folders) for split, root in roots.items()}
        count = sum(len(s) for s in samples.values())
        need = folder_cache.decoded_bytes(count, self.channels, self.hw)
        budget = int(self.cache_max_gb * 1e9) if self.cache_max_gb is not None else folder_cache.default_budget_bytes(self._device())
        if need > budget:
            log.info("data=folder: %d images decoded would take %.2f GB, over data.cache_max_gb=%s (%.2f GB): decoding them "
                     "per image in DataLoader workers every epoch; raise data.cache_max_gb to decode them once",
                     count, need / 1e9, self.cache_max_gb if self.cache_max_gb is not None else "null", budget / 1e9)
            self.streamed = StreamedFolder(samples, self.channels, self.hw)
            self._report_bad(self.streamed.bad)
            index = self.carve(len(self.streamed.train), str(self.root), torch.Generator().manual_seed(self.seed),
                               None if self.streamed.test is not None else self.test_size,
                               labels=torch.tensor(self.streamed.train.targets))
            self.streamed.split(index)
            self.split_index = index
            self.pool_keys = [str(path.relative_to(roots["train"])) for path, _ in self.streamed.train.samples]
            return
        decoded = {split: folder_cache.load_or_decode(root, samples[split], self.channels, self.hw, self.cache_dir,
                                                      self.num_workers)[0] for split, root in roots.items()}
        self._report_bad([(str(roots[split] / file), reason) for split, d in decoded.items() for file, reason in d.bad])
        images, labels = decoded["train"].images, decoded["train"].labels
        index = self.carve(len(images), str(self.root), torch.Generator().manual_seed(self.seed),
                           None if "test" in decoded else self.test_size, labels=labels)
        device = self._device()
        self.splits = {split: (images[rows].to(device), labels[rows].to(device)) for split, rows in index.items()}
        self.pool, self.pool_keys, self.split_index = (images, labels), decoded["train"].files, index
        if "test" in decoded:
            self.splits["test"] = (decoded["test"].images.to(device), decoded["test"].labels.to(device))

    def _report_bad(self, bad: list[tuple[str, str]]) -> None:
        if not bad:
            return
        listed = "; ".join(f"{file} ({reason})" for file, reason in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        if not self.skip_bad_images:
            raise ConfigError(f"data.skip_bad_images=false and {len(bad)} images cannot be read: {listed}. Replace or remove "
                              "them, or set data.skip_bad_images=true to train without them")
        self.skipped = bad
        log.warning("data=folder: skipped %d images that cannot be read: %s", len(bad), listed)

    def _loader(self, split: str, shuffle: bool):
        if self.streamed is None:
            return super()._loader(split, shuffle)
        return self.streamed.loader(split, self.batch_size if shuffle else self.eval_batch_size, shuffle, self.num_workers,
                                    self.seed)


class StreamedFolder:
    """A folder too large to hold decoded: its images decoded per image in DataLoader workers, with the cache's
    transforms (the same images as decoding once would give). Unreadable files are left out and listed in ``bad``;
    ``split`` cuts the splits the data module carved."""

    def __init__(self, samples: dict[str, list[tuple[Path, int]]], channels: int, hw: tuple[int, int]):
        from tinyvision.data.folder_cache import transform_for

        self.bad: list[tuple[str, str]] = []
        transform = transform_for(channels, hw)
        self.train = ImageFiles(self._readable(samples["train"]), transform)
        self.test = ImageFiles(self._readable(samples["test"]), transform) if "test" in samples else None
        self.datasets: dict[str, torch.utils.data.Dataset] = {}

    def _readable(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        from PIL import Image

        kept = []
        for path, label in samples:
            try:
                with Image.open(path) as image:
                    image.verify()  # the header and structure, without decoding every pixel
                kept.append((path, label))
            except Exception as error:
                self.bad.append((str(path), f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"))
        return kept

    def split(self, index: dict[str, Tensor]) -> None:
        self.datasets = {split: torch.utils.data.Subset(self.train, rows.tolist()) for split, rows in index.items()}
        if self.test is not None:
            self.datasets["test"] = self.test

    def loader(self, split: str, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                           persistent_workers=num_workers > 0,
                                           generator=torch.Generator().manual_seed(seed) if shuffle else None)


class ImageFiles(torch.utils.data.Dataset):
    """(image, label) of listed files, decoded with ``transform`` when asked (ImageFolder's job, over the folder's one
    class map: tinyvision.image_folders)."""

    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples, self.transform = samples, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from tinyvision.data.folder_cache import open_image

        path, label = self.samples[index]
        return self.transform(open_image(str(path))), label


def data_module_settings(data: Any) -> dict[str, Any]:
    """The data config less the keys that belong to the classifier (its input normalization)."""
    settings = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data)
    return {key: value for key, value in settings.items() if key not in ("mean", "std")}


FOLDER_ONLY = ("test_size", "num_workers", "cache_max_gb", "cache_dir", "skip_bad_images")
BUILT_IN_ONLY = ("dataset", "split", "label_type", "mirrors", "download")


class DataSettings(Section):
    """``data``: a dataset's files, shape, split and batches (the data modules' arguments), and the classifier's
    normalization (``mean``, ``std``), which the data module leaves to it."""

    target: str = Field(alias="_target_")
    dataset: Literal[sources.DATASETS] | None = spec(one_of(sources.DATASETS), "fashion", None)
    split: Literal[sources.EMNIST_SPLITS] | None = spec(f"EMNIST's {one_of(sources.EMNIST_SPLITS)}", "balanced", None)
    label_type: Literal["fine", "coarse"] = spec("fine (100 classes) or coarse (20 superclasses)", "fine", "fine")
    root: str = spec("a directory path", "data")
    mirrors: list[str] = spec("a list of directories", "[/usr/share/datasets/fashion-mnist]", [])
    download: bool = spec("true or false", True, True)
    channels: Literal[1, 3] = spec("1 (grey) or 3 (colour)", 3)
    image_size: ImageSide | Annotated[list[ImageSide], Field(min_length=2, max_length=2)] = spec(
        f"a size in pixels from 1 to {MAX_IMAGE_SIDE}, or [height, width]", 32
    )
    num_classes: int | None = spec("a whole number, 2 or more (data=folder: or null, the number of class folders)", 10, ge=2)
    mean: Annotated[list[float], Field(min_length=1)] = spec("one number, or one per channel", "[0.5]")
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = spec(
        "one positive number, or one per channel (0 would divide by zero)", "[0.25]"
    )
    batch_size: PositiveInt = spec("a whole number of images, 1 or more", 64)
    eval_batch_size: PositiveInt = spec("a whole number of images, 1 or more", 256)
    val_size: PositiveInt | Annotated[float, Field(gt=0, lt=1)] = spec(
        "a number of images (1 or more) or a fraction between 0 and 1", 0.1
    )
    train_size: PositiveInt | Annotated[float, Field(gt=0, le=1)] | None = spec(
        "null (all), a number of images (1 or more) or a fraction from 0 to 1", 5000, None
    )
    test_size: PositiveInt | Annotated[float, Field(gt=0, lt=1)] = spec(
        "a number of images (1 or more) or a fraction between 0 and 1", 0.2, 0.2
    )
    num_workers: int = spec("a whole number, 0 or more", 2, 2, ge=0)
    cache_max_gb: Annotated[float, Field(ge=0)] | Annotated[int, Field(ge=0)] | None = spec(
        "a number of gigabytes, 0 or more, or null (half the device's free memory)", 2, None)
    cache_dir: str = spec("a directory path", "data/cache", "data/cache")
    skip_bad_images: bool = spec("true or false", True, True)
    seed: int = spec("a whole number, 0 or more", 42, ge=0)
    test_every_epoch: bool = spec("true or false", True, False)
    folds: Annotated[int, Field(ge=2)] | None = spec("null (no cross-validation) or a whole number of folds, 2 or more",
                                                    5, None)
    fold: int = spec("a whole number, 0 or more (the fold that validates)", 0, 0, ge=0)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)

    def input_definition(self) -> InputDefinition:
        """What a classifier of this data takes: the images' shape, the classes, and the normalization it applies."""
        size = tuple(self.image_size) if isinstance(self.image_size, list) else self.image_size
        return InputDefinition(channels=self.channels, image_size=size, num_classes=self.num_classes, mean=tuple(self.mean),
                               std=tuple(self.std), dataset=self.dataset or "folder")

    def build(self) -> L.LightningDataModule:
        """The data module these settings name; it hands over uint8 images (mean and std are the classifier's)."""
        arguments = {key: value for key, value in self.as_config().items() if key not in ("_target_", "mean", "std")}
        return instantiate(self.target, arguments)

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_number_is_a_list(cls, value):
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _ints_are_numbers(cls, value):
        if isinstance(value, list):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _fits_in_memory(cls, value):
        sides = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v > MAX_IMAGE_SIDE for v in sides):
            largest = 64 * 3 * 4 * MAX_IMAGE_SIDE**2 / 1e9
            raise ConfigValueError("image_size", value, f"at most {MAX_IMAGE_SIDE} pixels a side: a batch of 64 colour "
                                   f"{MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} images is already {largest:.1f} GB as the model's "
                                   "input; a larger side is a typo, or needs tiling rather than resizing", 224)
        return value

    @model_validator(mode="after")
    def _keys_of_its_data_module(self):
        """One settings model serves both data modules (a built-in dataset's and a folder's): a key only the other
        one takes is refused here, not in its constructor as a TypeError."""
        folder = self.target.endswith("FolderDataModule")
        others = BUILT_IN_ONLY if folder else FOLDER_ONLY
        given = [key for key in others if key in self.model_fields_set]
        if given:
            owner, this = ("a built-in dataset's (data=mnist, ...)", "data=folder") if folder else ("data=folder's", f"data={self.dataset}")
            raise ConfigValueError(given[0], getattr(self, given[0]), f"a key of {owner} data module that {this} does not "
                                   f"take: remove it", ...)
        return self

    @model_validator(mode="after")
    def _counted_only_in_a_folder(self):
        if self.num_classes is None and not self.target.endswith("FolderDataModule"):
            raise ConfigValueError("num_classes", None, "a whole number, 2 or more: only data=folder counts its classes "
                                   "(its class folders)", 10)
        return self

    @model_validator(mode="after")
    def _fold_of_the_folds(self):
        if self.folds is None and self.fold != 0:
            raise ConfigValueError("fold", self.fold, "a fold of data.folds, which is null: set data.folds too "
                                   f"(data.folds=5 data.fold={self.fold})", 0)
        if self.folds is not None and self.fold >= self.folds:
            raise ConfigValueError("fold", self.fold, f"a fold from 0 to {self.folds - 1} (data.folds={self.folds})", 0)
        return self

    @model_validator(mode="after")
    def _per_channel(self):
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                allowed = "one value" + (f" or {self.channels}" if self.channels > 1 else "")
                raise ConfigValueError(key, values, f"{allowed} (data.channels={self.channels})", "[0.5]")
        return self

    @model_validator(mode="after")
    def _shifts_inside_the_image(self):
        """A translation reflects the image into its border, which needs fewer pixels than the image has; a crop
        padded by as much as the image may hold none of it."""
        height, width = as_hw(self.image_size)
        size = f"{height}×{width} images (data.image_size={show(self.image_size)})"
        shift = self.augment.translate
        if shift >= min(height, width):
            raise ConfigValueError("augment.translate", shift, f"less than the image's side: at most {min(height, width) - 1} "
                                   f"pixels for {size}", min(2, min(height, width) - 1))
        padding = self.augment.crop_padding
        if padding is not None:
            left, top, right, bottom = padding_ltrb(padding)
            if max(left, right) >= width or max(top, bottom) >= height:
                raise ConfigValueError("augment.crop_padding", padding, f"less than the image's side: at most {width - 1} "
                                       f"pixels left and right, {height - 1} top and bottom, for {size}",
                                       min(4, min(height, width) - 1))
        return self
