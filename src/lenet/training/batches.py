"""Batches sliced from tensors that hold a whole split, sharded over DDP ranks."""

import torch


class InMemoryLoader:
    """Batches by slicing tensors that hold the whole split: no per-sample work, no collate.

    With a generator it reshuffles every epoch; without one it keeps the split's order. The images stay on
    whatever device they live on. Under DDP (Lightning shards only DataLoaders) rank `rank` of `world_size` takes
    every world_size-th image. For training every rank draws the same order from the same seed and the tail is
    trimmed, so all ranks run the same number of steps (DDP synchronizes every step); for evaluation every image
    is kept, so metrics summed over the ranks count each image once. A last training batch of a single image
    joins the batch before it: batch norm cannot train on one image.
    """

    def __init__(self, images, labels, batch_size: int, generator=None, rank=0, world_size=1, train=False):
        self.images, self.labels, self.batch_size, self.generator = images, labels, batch_size, generator
        self.rank, self.world_size, self.train = rank, world_size, train

    def __len__(self) -> int:
        return len(self._bounds())

    def __iter__(self):
        share = self._share()
        if self.generator is None:  # the split's own order: every batch is a view, not a copy
            images, labels = self.images[share], self.labels[share]
            for start, end in self._bounds():
                yield images[start:end], labels[start:end]
            return
        order = torch.randperm(len(self.labels), generator=self.generator).to(self.images.device)[share]
        for start, end in self._bounds():
            index = order[start:end]  # index_select: 5x faster here than indexing with [index]
            yield self.images.index_select(0, index), self.labels.index_select(0, index)

    def _share(self) -> slice:
        """This rank's positions in the epoch's order."""
        n = len(self.labels)
        return slice(self.rank, n - n % self.world_size if self.train else n, self.world_size)

    def _bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each batch in this rank's share."""
        size = len(range(len(self.labels))[self._share()])
        starts = list(range(0, size, self.batch_size))
        if self.train and len(starts) > 1 and size - starts[-1] == 1:
            starts.pop()
        return list(zip(starts, [*starts[1:], size], strict=True))
