"""``ReleaseDataset``: a release as a PyTorch ``IterableDataset`` (the optional ``torch`` extra).

    loader = DataLoader(ReleaseDataset("cats-v1", split="train", decode=to_tensor), batch_size=64,
                        num_workers=4)

It divides the release by itself between DataLoader workers (``torch.utils.data.get_worker_info()``)
and distributed ranks (``torch.distributed``, when initialised): part ``rank * workers + worker`` of
``world_size * workers``, so the workers of all ranks together read every image exactly once per epoch.
The dataset holds only its settings (it is pickled into spawned workers): each worker opens its own
connection and loop when it starts iterating (``corpus_manager.iter_release``).

Importing ``corpus_manager`` never imports torch; importing this module does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed
import torch.utils.data

from .stream import iter_release


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ReleaseDataset(torch.utils.data.IterableDataset[Any]):
    """The images of release ``name`` (of ``split``, if given) as ``(data, record)``, or as
    ``decode(data, record)`` when ``decode`` is given (it runs in the worker: decode to tensors there).

    ``shuffle`` with ``seed``: a new order each epoch (``set_epoch(n)`` before each epoch, as with
    ``DistributedSampler``), the same for every worker and rank, so the parts stay disjoint. The other
    keyword arguments go to ``iter_release`` (``connection_string``, ``account_url``, ``prefetch``)."""

    def __init__(
        self,
        name: str,
        *,
        split: str | None = None,
        corpus: str | None = None,
        decode: Callable[[bytes, dict[str, Any]], Any] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        connection_string: str | None = None,
        account_url: str | None = None,
        prefetch: int = 32,
    ) -> None:
        super().__init__()
        self.name = name
        self.split = split
        self.corpus = corpus
        self.decode = decode
        self.shuffle = shuffle
        self.seed = seed
        self.connection_string = connection_string
        self.account_url = account_url
        self.prefetch = prefetch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (its shuffle order). Call it before creating the iterator:
        with ``persistent_workers=True`` the workers keep the epoch they copied when they started."""
        self.epoch = epoch

    def part(self) -> tuple[int, int]:
        """(this reader's part, number of parts): distributed rank x DataLoader worker."""
        rank, world = _rank_and_world()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def __iter__(self) -> Iterator[Any]:
        rank, world = self.part()
        samples = iter_release(
            self.name,
            split=self.split,
            corpus=self.corpus,
            connection_string=self.connection_string,
            account_url=self.account_url,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=rank,
            world_size=world,
            prefetch=self.prefetch,
        )
        if self.decode is None:
            return samples
        decode = self.decode
        return (decode(data, record) for data, record in samples)


__all__ = ["ReleaseDataset"]
