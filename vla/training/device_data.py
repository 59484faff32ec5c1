"""The training samples resident on the device, batches gathered there (``trainer.gpu_data``).

The DataLoader path builds every batch on the host (a worker reads each sample, re-words its
instruction, tokenises its action), copies it over, and the frozen text encoder looks each
instruction up per step from Python. On a GPU that costs more than the large model's
compiled step. Here every training sample is read once, through the same dataset items the
loader yields, into device tensors; every distinct instruction is encoded once into a table
of encoder states; a step is then a handful of gathers on the device, in exactly the order
``StepSampler`` gives the loader, with no copy from the host and no wait for it.

Device memory: ~12 KB per sample (64 px images) plus, per distinct wording,
``text_max_length`` x the encoder's width x 4 bytes (98 KB for all-mpnet-base-v2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from envs.progress import progress as progress_bar
from vla.data import ActionTokenDataset, collate
from vla.language import PretrainedTextEncoder


class DeviceBatches(Iterator[dict[str, Any]]):
    """Endless batches of ``batch_size`` samples of ``dataset`` on ``device``, in the order of
    ``StepSampler(len(dataset), seed, start, rank, world_size)``: the loader's batches, with
    the instruction as the frozen encoder's states (``text_states``, ``text_mask``, padded to
    ``model.text_max_length``) instead of strings."""

    def __init__(
        self,
        dataset: ActionTokenDataset,
        policy: torch.nn.Module,
        device: torch.device,
        batch_size: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        progress: bool = False,
    ):
        if not isinstance(policy.text, PretrainedTextEncoder):
            raise ValueError(
                "trainer.gpu_data=true encodes each instruction once with a frozen text encoder; "
                f"model.text_encoder={policy.config.text_encoder} is trained with the policy"
            )
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.seed, self.device = len(dataset), seed, device
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.position = start  # global sample position, counted across epochs as StepSampler counts it
        self.tensors, instructions = read_samples(dataset, device, workers, progress)
        self.text_rows, self.text_states, self.text_mask = encode_instructions(
            policy.text, instructions, device, policy.config.text_max_length, progress
        )
        self._permutations: dict[int, torch.Tensor] = {}

    def __next__(self) -> dict[str, Any]:
        index = self.indices(self.position)
        self.position += self.batch_size * self.world_size
        batch = {k: v.index_select(0, index) for k, v in self.tensors.items()}
        rows = self.text_rows.index_select(0, index)
        batch["text_states"] = self.text_states.index_select(0, rows)
        batch["text_mask"] = self.text_mask.index_select(0, rows)
        return batch

    def indices(self, position: int) -> torch.Tensor:
        """Sample indices (batch_size,) on the device of this rank's share of the global batch
        that starts at ``position``: every ``world_size``-th position from ``position + rank``,
        epoch e ordered by ``permutation(seed + e)``. Slices of a permutation already on the
        device: nothing crosses from the host but once per epoch."""
        pieces, p = [], position + self.rank
        end = position + self.batch_size * self.world_size
        while p < end:
            epoch, offset = divmod(p, self.n)
            stop = min(end, (epoch + 1) * self.n)
            pieces.append(self._permutation(epoch)[offset : offset + stop - p : self.world_size])
            p += len(pieces[-1]) * self.world_size
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            order = np.random.default_rng(self.seed + epoch).permutation(self.n)  # StepSampler's
            self._permutations = {e: v for e, v in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = torch.from_numpy(order).to(self.device)
        return self._permutations[epoch]


def read_samples(
    dataset: ActionTokenDataset, device: torch.device, workers: int, progress: bool, chunk: int = 2048
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every sample of ``dataset`` as device tensors (one row per sample, dataset order) and its
    instruction string: one pass of the loader's own items and collate, in ``workers`` processes."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=chunk,
        num_workers=workers,
        collate_fn=collate,
        # its own generator: this pass must not draw from the global RNG (resumed runs match)
        generator=torch.Generator().manual_seed(0),
    )
    tensors: dict[str, torch.Tensor] = {}
    instructions: list[str] = []
    for batch in progress_bar(loader, desc="samples to device", disable=not progress, leave=False):
        start = len(instructions)
        for key, value in batch.items():
            if key == "instruction":
                continue
            if key not in tensors:
                tensors[key] = torch.empty((len(dataset), *value.shape[1:]), dtype=value.dtype, device=device)
            tensors[key][start : start + len(value)] = value.to(device)
        instructions += batch["instruction"]
    return tensors, instructions


@torch.no_grad()
def encode_instructions(
    encoder: PretrainedTextEncoder,
    instructions: list[str],
    device: torch.device,
    length: int,
    progress: bool = False,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row of each instruction (N,), states of each distinct reading (U, length, D), their
    mask (U, length)): what the encoder gives the policy for each string (states zero past the
    last token, as its own cache keeps them), each distinct reading encoded once. Readings are
    encoded sorted by token count, so a chunk pads little."""
    reads = [encoder.read(text) for text in instructions]
    distinct = list(dict.fromkeys(reads))
    row_of = {text: row for row, text in enumerate(distinct)}
    rows = torch.tensor([row_of[text] for text in reads], device=device)
    tokens = encoder.tokenizer(distinct, truncation=True, max_length=encoder.max_length)["input_ids"]
    order = np.argsort([len(t) for t in tokens], kind="stable")
    states = torch.zeros(len(distinct), length, encoder.out_dim, device=device)
    mask = torch.zeros(len(distinct), length, dtype=torch.bool, device=device)
    encoder.model.to(device).eval()  # frozen means eval mode too: no dropout in the states
    starts = range(0, len(distinct), chunk)
    for start in progress_bar(starts, desc="encode instructions", disable=not progress, leave=False):
        part = order[start : start + chunk]
        texts = [distinct[i] for i in part]
        batch = encoder.tokenizer(
            texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
        ).to(device)
        real = batch["attention_mask"].bool()
        out = encoder.model(**batch).last_hidden_state * real[..., None]
        index = torch.from_numpy(part).to(device)
        states[index, : out.shape[1]] = out.float()
        mask[index, : out.shape[1]] = real
    return rows, states, mask
