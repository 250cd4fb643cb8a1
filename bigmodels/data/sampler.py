"""`ResumableSampler`: seeded batches of indices that resume exactly mid-epoch, sharded across ranks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from bigmodels.errors import ConfigError

__all__ = ["ResumableSampler"]


class ResumableSampler:
    """Yields this rank's indices (LongTensor) for each global batch; its position is checkpointable.

    Epoch `e` visits `torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + e))`
    (`arange` without shuffle) in global batches of `batch_size`. With `world_size > 1` every rank gets
    a contiguous slice of each global batch, so the ranks' slices concatenate to the single-process
    batch. `batch_size` must divide by `world_size`. With `drop_last=False` the last, partial global
    batch is split as evenly as `torch.tensor_split` does (the first ranks get one extra index; a rank
    may get none when fewer indices than ranks remain).

    With ``lengths`` (one per sample, e.g. token counts), batches group samples of similar length (sorted
    within pools of ``group_batches`` batches, then the batches shuffled), so padded text batches waste
    little compute; the order is still a pure function of (seed, epoch).

    `iter(sampler)` yields the rest of the current epoch, then moves to the next epoch, so
    `for epoch in range(n): for idx in sampler: ...` works and `state_dict()` is always the next batch
    to yield. Used through a DataLoader with prefetching, the sampler runs ahead of the batches the
    loop has consumed: checkpoint the trainer's own position in that case. One iterator at a time.

    >>> sampler = ResumableSampler(10, batch_size=4, seed=0)
    >>> first = next(iter(sampler)); state = sampler.state_dict()  # {'epoch': 0, 'batch': 1}
    >>> resumed = ResumableSampler(10, batch_size=4, seed=0); resumed.load_state_dict(state)
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | Tensor | None = None,
        group_batches: int = 50,
    ) -> None:
        if lengths is not None and len(lengths) != num_samples:
            raise ConfigError(f"lengths has {len(lengths)} entries for {num_samples} samples; give one per sample")
        if num_samples < 1 or batch_size < 1:
            raise ConfigError(
                f"num_samples={num_samples} and batch_size={batch_size} must both be >= 1"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must lie in 0..world_size-1 with world_size={world_size} >= 1")
        if batch_size % world_size:
            raise ConfigError(
                f"global batch_size={batch_size} does not divide evenly by world_size={world_size}; "
                f"use a multiple of {world_size}, e.g. {batch_size - batch_size % world_size or world_size}"
            )
        if drop_last and num_samples < batch_size:
            raise ConfigError(
                f"batch_size={batch_size} is larger than the {num_samples} samples, so drop_last=True "
                "yields no batch; lower batch_size or pass drop_last=False"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.group_batches = group_batches
        self.epoch = 0
        self.batch = 0  # the next batch of `epoch` to yield

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=g)
        if self.lengths is None:
            return order
        # Length grouping: within each pool of `group_batches` batches, sort by length so a batch pads
        # little, then shuffle the order of the whole batches (the last, partial batch stays last).
        pool = self.batch_size * self.group_batches
        chunks = [c[self.lengths[c].argsort(descending=True, stable=True)] for c in order.split(pool)]
        order = torch.cat(chunks)
        full = self.num_samples // self.batch_size * self.batch_size
        batches = order[:full].view(-1, self.batch_size)
        batches = batches[torch.randperm(len(batches), generator=g)]
        return torch.cat([batches.flatten(), order[full:]])

    def _roll_over(self) -> None:
        # A finished epoch whose iterator was not run to StopIteration (e.g. islice) still counts as done.
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0

    def __iter__(self) -> Iterator[Tensor]:
        self._roll_over()
        order = self._order(self.epoch)  # (num_samples,)
        while self.batch < len(self):
            start = self.batch * self.batch_size
            global_batch = order[start : start + self.batch_size]  # (batch_size,) or shorter at the end
            self.batch += 1  # advance first: state_dict() during the yield names the next batch
            yield torch.tensor_split(global_batch, self.world_size)[self.rank]
        self._roll_over()

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch."""
        self.epoch, self.batch = int(epoch), 0

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "batch"}: the next batch to yield."""
        if self.batch >= len(self):
            return {"epoch": self.epoch + 1, "batch": 0}
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue exactly where `state_dict()` was taken (same num_samples, batch_size, seed)."""
        if set(state) != {"epoch", "batch"}:
            raise ConfigError(
                f"sampler state has keys {sorted(state)}; expected exactly ['batch', 'epoch'] "
                "as written by ResumableSampler.state_dict()"
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ConfigError(
                f"sampler state {dict(state)} does not fit this sampler ({len(self)} batches per epoch); "
                "resume with the num_samples and batch_size the state was saved with"
            )
        self.epoch, self.batch = epoch, batch
