"""Training data: a seeded, resumable per-epoch order sharded over ranks, the batch stream (optional
prefetching workers, same order), seeded flips and the train/validation folders (scanned at start-up).
"""
from __future__ import annotations

from pathlib import Path

import torch

from e4e import config as C


class ShardedOrder:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < batch_size * world:
            raise ValueError(f"the training set has {n} images, fewer than one global batch "
                             f"({batch_size} x {world} processes)")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def next_indices(self) -> list[int]:
        span = self.batch * self.world
        if self.pos + span > self.n:  # drop_last
            self.epoch, self.pos = self.epoch + 1, 0
        chunk = self._permutation()[self.pos:self.pos + span]
        self.pos += span
        return chunk[self.rank::self.world].tolist()

    def peek_epoch(self) -> list[list[int]]:
        """This rank's index lists for the rest of the current epoch (state unchanged)."""
        span, perm, out = self.batch * self.world, self._permutation(), []
        for pos in range(self.pos, self.n - span + 1, span):
            out.append(perm[pos:pos + span][self.rank::self.world].tolist())
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.pos = int(sd["epoch"]), int(sd["pos"])


def _item_image(item) -> torch.Tensor:
    if isinstance(item, dict):
        item = item.get("image", next(iter(item.values())))
    if isinstance(item, (tuple, list)):
        item = item[0]
    return item


def _fetch(dataset, indices: list[int]) -> torch.Tensor:
    return torch.stack([_item_image(dataset[i]) for i in indices]).float()


def _collate(items) -> torch.Tensor:
    return torch.stack([_item_image(i) for i in items]).float()


class BatchStream:
    """Batches in ``ShardedOrder`` order; with ``num_workers > 0`` a DataLoader prefetches the rest of
    the epoch (index lists fixed in advance, so the order, and hence resume, is identical)."""

    def __init__(self, dataset, order: ShardedOrder, num_workers: int = 0):
        self.dataset, self.order, self.num_workers = dataset, order, num_workers
        self._it, self._epoch = None, None

    def next(self) -> torch.Tensor:
        idx = self.order.next_indices()
        if self.num_workers <= 0:
            return _fetch(self.dataset, idx)
        if self._it is None or self._epoch != self.order.epoch:
            batches = [idx] + self.order.peek_epoch()
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                                 collate_fn=_collate,
                                                 generator=torch.Generator().manual_seed(self.order.seed))
            self._it, self._epoch = iter(loader), self.order.epoch
        return next(self._it)

    def close(self) -> None:
        self._it = None


def _flip(x: torch.Tensor, seed: int, step: int, rank: int) -> torch.Tensor:
    """Random horizontal flip with a generator derived from (seed, step, rank): worker/resume proof."""
    g = torch.Generator().manual_seed((seed * 7_919 + step) * 131 + rank)
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    if mask.any():
        x = x.clone()
        x[mask] = x[mask].flip(-1)
    return x


DATA_ROOT = Path("data")  # default folders: data/<domain>/{train,val} (python -m experiments.synth build)


def default_data_dirs(domain: str) -> tuple[Path, Path]:
    return DATA_ROOT / domain / "train", DATA_ROOT / domain / "val"


def _build_datasets(cfg: C.TrainConfig, input_size):
    """(train, val) image folders: ``data.train_dir`` (default data/<domain>/train) and
    ``data.val_dir`` (default data/<domain>/val when it exists, else a seeded ``val_fraction``
    hold-out of the training folder; never the test split)."""
    from e4e.data import ImageFolderDataset

    d_train, d_val = default_data_dirs(cfg.data.domain)
    train_dir = Path(cfg.data.train_dir) if cfg.data.train_dir else d_train
    if not train_dir.is_dir():
        raise C.ConfigError(f"training images not found: {train_dir} (set data.train_dir"
                            + (", or run `python -m experiments.synth build --out data/synth`)"
                               if cfg.data.domain == "synth" else ")"))
    val_dir = Path(cfg.data.val_dir) if cfg.data.val_dir else (d_val if not cfg.data.train_dir and d_val.is_dir()
                                                              else None)
    if cfg.data.scan:
        from e4e.data import check_image_folder

        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        for folder in [train_dir] + ([val_dir] if val_dir is not None else []):
            try:
                check_image_folder(folder, hw, cfg.data.strict_size)
            except ValueError as e:
                raise C.ConfigError(str(e)) from None
    full = ImageFolderDataset(train_dir, size=input_size)
    if val_dir is not None:
        return full, ImageFolderDataset(val_dir, size=input_size)
    n = len(full)
    n_val = int(round(n * cfg.data.val_fraction))
    if n_val == 0:
        return full, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 12345)).tolist()
    return torch.utils.data.Subset(full, sorted(perm[n_val:])), torch.utils.data.Subset(full, sorted(perm[:n_val]))
