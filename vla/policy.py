"""The RT-2-style policy: one decoder-only transformer over

    [ vision tokens | text tokens | proprio token | action tokens ]

with a bidirectional prefix (everything but the actions attends to the whole prefix) and
causal action tokens, trained with next-token cross-entropy on the action tokens.

Action token i is predicted at action position i, whose input is the embedding of
action token i-1 (a learned start token for i = 0). ``decoding="parallel"`` replaces
those inputs by position-only queries, so all 7 tokens come out of one pass (faster,
but each element is predicted without seeing the others).

Action chunking (``chunk > 1``): the model is trained to predict the next ``chunk`` actions
of the demo, ``chunk x 7`` causal action tokens, and executes the first (receding horizon:
it re-plans every step). Because the action tokens are causal, the first action's tokens
never see the later ones, so decoding stops after 7 tokens and inference costs what it
costs without chunking; the later actions are a training signal about where the demo goes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla.flow import FlowMatchingHead, bins_to_unit, flow_training_pair, unit_to_bins
from vla.language import (
    InstructionReader,
    KnownCommands,
    check_text_encoder,
    is_pretrained,
    make_text_encoder,
    sentence_embedding,
)
from vla.tokenizer import soft_bin_targets
from vla.transformer import Block, KVCache
from vla.vision import TextQueriedKeypoints, ViT, adapt_vit, random_shift

DECODINGS = ("autoregressive", "parallel")
FUSIONS = ("tokens", "film")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")
ACTION_HEADS = ("tokens", "flow")
KEY_POSITION_SCALE = 0.1  # metres -> units of the auxiliary regression (the table spans ~+-0.2 m)
KEY_POSITION_DIM = 6
KEYPOINT_COUNTS = (0, 2)  # off, or one per key position: the target and its destination
# Camera name -> the observation key holding its image (the env's contract).
CAMERA_KEYS = {"scene": "image", "wrist": "wrist_image"}


@dataclass
class PolicyConfig:
    """Every model setting and its default: the defaults are the CPU model (configs/model/small.yaml
    states nothing more); configs/model/large.yaml states what the GPU model changes."""

    # --- vision: a ViT over the scene camera ---
    image_size: int = 64  # square camera images, pixels per side
    patch_size: int = 16  # ViT patch side in pixels: (64 / 16)^2 = 16 patch tokens
    vision_pool: int = 1  # average-pool k x k patch tokens before the decoder (fewer tokens: V5, V20)
    vision_layers: int = 1  # ViT transformer blocks
    patch_embed: str = "linear"  # linear (classic ViT) | conv (a small conv stem before the tokens)
    vision_frozen_layers: int = 0  # the ViT's patch embedding and first N blocks get no gradient (pretrained kept)
    vision_lora_rank: int = 0  # >0: the whole ViT frozen, LoRA adapters of this rank on its blocks (peft)
    vision_tokens: bool = True  # false: no ViT, the decoder sees the scene through the keypoint tokens only
    cameras: list[str] = field(default_factory=lambda: ["scene"])  # scene | scene + wrist (one shared ViT)
    # --- the decoder ---
    width: int = 64  # model width of every token
    layers: int = 2  # decoder transformer blocks
    heads: int = 4  # attention heads (decoder and ViT)
    dropout: float = 0.0  # dropout in the decoder blocks
    # --- language ---
    text_encoder: str = "sentence-transformers/all-mpnet-base-v2"  # a Hugging Face id, a local folder, or scratch
    text_max_length: int = 32  # instruction tokens kept
    sentence_token: bool = True  # the instruction's sentence embedding as one text token
    word_tokens: bool = False  # also the encoder's per-word states as text tokens (~13 more tokens)
    fusion: str = "tokens"  # tokens (text tokens in the decoder's sequence) | film (the sentence scales and
    # shifts every decoder block's features, as RT-1 conditions its image encoder; no text tokens)
    text_normalise: bool = True  # lower-case, drop punctuation and extra spaces before encoding
    colour_words: bool = True  # read colour words outside the palette as the palette colour they look like
    colour_palette: dict[str, list[float]] = field(default_factory=dict)  # the world's colours (name -> sRGB),
    # set by training from the world it learns (envs/vocabulary.py); empty: colour words are read as typed
    noun_reading: bool = True  # act reads a colour's unknown noun ("red block") as a thing of that colour in view
    scene_nouns: dict[str, list[str]] = field(default_factory=dict)  # the world's nouns per colour (red: cube,
    # cylinder), set by training (envs/vocabulary.py); empty: nouns are read as typed (vla/noun_reading.py)
    # --- proprioception ---
    use_proprio: bool = True  # one proprio token (standardised with the demos' statistics)
    proprio_dim: int = 9  # leading env proprio elements read (envs.PROPRIO_NAMES): pose, gripper opening, its velocity
    # --- where the instruction points: text-queried keypoints ---
    keypoints: int = 2  # 2: soft-argmax keypoints of the target and its destination as tokens; 0: off
    keypoint_channels: int = 16  # channels of the keypoint reader's half-resolution conv map
    keypoint_sentence: bool = True  # each keypoint question also reads the sentence embedding (held-out nouns)
    aux_weight: float = 0.0  # >0: train the keypoint heatmaps on the demos too (needs images, no keypoint cache)
    loss_weighting: str = "fixed"  # fixed: action + aux_weight x aux | uncertainty: learned weights (Kendall et al.)
    scope_check: bool = True  # with keypoints: the reader may answer "nothing named is in view", and act stops
    # --- actions ---
    action_head: str = "tokens"  # tokens (7 binned tokens per action, cross-entropy) | flow (vla/flow.py)
    flow_steps: int = 10  # flow head: Euler steps from noise to the action chunk at inference
    action_dim: int = 7  # [dx, dy, dz, droll, dpitch, dyaw, gripper]
    bins: int = 256  # action tokens per element (the tokenizer's bins)
    decoding: str = "parallel"  # parallel (7 tokens in one pass) | autoregressive (KV cache)
    label_sigma: float = 24.0  # each label spread as a Gaussian of this std in bins (HL-Gauss); 0: one-hot
    chunk: int = 1  # >1: train on the next `chunk` actions, execute the first (action chunking)
    augment_pad: int = 4  # random-shift augmentation range in pixels (trainer.augment switches it on)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown policy config keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        config = cls(**values)
        config.cameras = list(config.cameras)
        unknown_cameras = [c for c in config.cameras if c not in CAMERA_KEYS]
        if unknown_cameras or not config.cameras or config.cameras[0] != "scene":
            raise ValueError(f"cameras must start with 'scene' and hold only {list(CAMERA_KEYS)}, got {config.cameras}")
        if config.keypoints not in KEYPOINT_COUNTS:
            raise ValueError(f"keypoints must be 0 (off) or 2 (target and destination), got {config.keypoints}")
        if not config.vision_tokens and (config.keypoints == 0 or config.cameras != ["scene"]):
            raise ValueError(
                "vision_tokens=false reads the scene through its keypoints alone: it needs keypoints=2 and "
                f"cameras=[scene], got keypoints={config.keypoints}, cameras={config.cameras}"
            )
        if not 0 <= config.vision_frozen_layers <= config.vision_layers or config.vision_lora_rank < 0:
            raise ValueError(
                f"vision_frozen_layers must be in [0, vision_layers={config.vision_layers}] and vision_lora_rank "
                f">= 0, got {config.vision_frozen_layers} and {config.vision_lora_rank}"
            )
        if config.vision_frozen_layers and config.vision_lora_rank:
            raise ValueError("vision_lora_rank already freezes the whole ViT: set vision_frozen_layers=0 with it")
        if (config.vision_frozen_layers or config.vision_lora_rank) and not config.vision_tokens:
            raise ValueError("vision_frozen_layers and vision_lora_rank adapt the ViT: they need vision_tokens=true")
        if config.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"unknown loss_weighting {config.loss_weighting!r}; valid values are: {', '.join(LOSS_WEIGHTINGS)}"
            )
        if config.loss_weighting == "uncertainty" and not config.aux_weight > 0:
            raise ValueError("loss_weighting=uncertainty balances the action and auxiliary losses: set aux_weight > 0")
        if config.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {config.fusion!r}; valid values are: {', '.join(FUSIONS)}")
        if config.fusion == "film" and config.word_tokens:
            raise ValueError("fusion=film conditions on the sentence embedding alone: it needs word_tokens=false")
        if config.fusion == "tokens" and not config.word_tokens and not config.sentence_token:
            raise ValueError(
                "word_tokens=false leaves the sentence token as the decoder's only text token: it needs "
                f"sentence_token=true, got sentence_token={config.sentence_token}"
            )
        if config.keypoint_sentence and not config.keypoints:
            raise ValueError("keypoint_sentence=true is read by the keypoint reader: it needs keypoints=2")
        if not isinstance(config.chunk, int) or config.chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1 (actions predicted per step), got {config.chunk!r}")
        if config.decoding not in DECODINGS:
            raise ValueError(f"unknown decoding {config.decoding!r}; valid values are: {', '.join(DECODINGS)}")
        if config.action_head not in ACTION_HEADS:
            raise ValueError(f"unknown action_head {config.action_head!r}; valid values are: {', '.join(ACTION_HEADS)}")
        if not isinstance(config.flow_steps, int) or config.flow_steps < 1:
            raise ValueError(f"flow_steps must be an integer >= 1 (Euler steps), got {config.flow_steps!r}")
        check_text_encoder(config.text_encoder)
        if not config.label_sigma >= 0:
            raise ValueError(f"label_sigma must be >= 0 bins (0: one-hot labels), got {config.label_sigma!r}")
        return config


class VLAPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = c = config
        self.vision = None
        if c.vision_tokens:
            vit = (c.image_size, c.patch_size, c.width, c.vision_layers, c.heads, c.vision_pool, c.patch_embed)
            self.vision = ViT(*vit)
            adapt_vit(self.vision, c.vision_frozen_layers, c.vision_lora_rank)
        # One ViT for every camera; a learned embedding per camera tells the decoder which view
        # a token came from.
        self.camera_embed = nn.Parameter(torch.randn(len(c.cameras), c.width) * 0.02)
        palette = c.colour_palette if c.colour_words else None
        self.reader = InstructionReader(c.text_normalise, palette)  # what the policy reads of an instruction
        self.text = make_text_encoder(c.text_encoder, c.width, c.text_max_length, self.reader)
        self.text_proj = nn.Linear(self.text.out_dim, c.width) if c.word_tokens else None
        self.keypoint_reader = None
        if c.keypoints:
            self.keypoint_reader = TextQueriedKeypoints(
                c.width,
                self.text.out_dim,
                c.keypoints,
                c.keypoint_channels,
                sentence=c.keypoint_sentence,
                abstain=c.scope_check,
            )
        self.proprio_proj = nn.Sequential(nn.Linear(c.proprio_dim, c.width), nn.LayerNorm(c.width))
        # Proprio arrives in metres and quaternion units: positions vary by ~0.1 while the
        # quaternion's w sits at ~1, so unscaled the gripper position is a whisper in the token.
        # Standardised with the demos' statistics (set_proprio_statistics), saved with the weights.
        self.register_buffer("proprio_mean", torch.zeros(c.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(c.proprio_dim))
        self.type_embed = nn.Parameter(torch.randn(4, c.width) * 0.02)  # vision, text, proprio, action
        # The token head's pieces (None with the flow head, which has its own: vla/flow.py).
        self.action_embed = self.start = self.head = self.flow = None
        self.register_buffer("soft_labels", None, persistent=False)
        if c.action_head == "tokens":
            self.action_embed = nn.Embedding(c.bins, c.width)  # the reserved action-token block
            # Parallel decoding never feeds earlier tokens back in: the embedding gets no gradient,
            # and DistributedDataParallel refuses trainable weights that take no part in the loss.
            self.action_embed.requires_grad_(c.decoding == "autoregressive")
            # Gaussian labels depend on the label's bin alone: one row per bin, made once, looked up
            # by the loss (not saved: the config re-makes it).
            if c.label_sigma > 0:
                self.soft_labels = soft_bin_targets(torch.arange(c.bins), c.bins, c.label_sigma)
        action_tokens = c.chunk * c.action_dim if c.action_head == "tokens" else c.chunk  # flow: one per action
        self.action_position = nn.Parameter(torch.randn(action_tokens, c.width) * 0.02)
        if c.action_head == "tokens":
            self.start = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, dropout=c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        if c.action_head == "tokens":
            self.head = nn.Linear(c.width, c.bins)
        else:
            self.flow = FlowMatchingHead(c.action_dim, c.width)
        self.key_position_head = None
        if c.aux_weight > 0 and not c.keypoints:  # with keypoints the aux loss supervises their heatmaps
            self.key_position_head = nn.Linear(c.width, KEY_POSITION_DIM)
        # Parallel decoding through FlexAttention instead of SDPA with a boolean mask (an inference
        # choice, not a weight: vla/fast_inference.py sets it on its copy when asked to).
        self.flex_attention = False
        self._flex_cache: dict[tuple, tuple[Any, Any]] = {}  # FlexAttention masks per shape (_flex_masks)
        # The keypoint heatmap logits of the last prefix (B, K, cells): the loss reads them
        # after the decoder has run, without threading them through every caller.
        self._keypoint_logits: torch.Tensor | None = None
        # made last, so every weight above starts as it does without it (same random draws)
        # act's second out-of-scope check: how close an instruction is to the commands trained on
        self.known_commands = KnownCommands(self.text.out_dim) if c.keypoints and c.scope_check else None
        self.sentence_proj = self.film_proj = None
        if c.fusion == "film":  # the sentence -> (scale, shift) x (attention, MLP) of every block
            self.film_proj = nn.Linear(self.text.out_dim, c.layers * 4 * c.width)
            nn.init.zeros_(self.film_proj.weight)  # starts as the identity: no scale, no shift
            nn.init.zeros_(self.film_proj.bias)
        elif c.sentence_token:
            self.sentence_proj = nn.Linear(self.text.out_dim, c.width)
        # Uncertainty weighting: one log-variance s per loss (action, auxiliary), each loss counted
        # as exp(-s) * loss + s, so a noisier loss learns a smaller weight and s keeps it from 0.
        self.loss_log_vars = nn.Parameter(torch.zeros(2)) if c.loss_weighting == "uncertainty" else None
        # FiLM's scales and shifts of the last prefix (B, layers, 4, width): the blocks read them
        # in _run, for the prefix and the actions after it.
        self._film: torch.Tensor | None = None

    # --- the prefix ----------------------------------------------------------------------
    def prefix(self, batch: dict[str, Any], augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and key mask of [vision | text | proprio]: (B, P, W), (B, P) bool. The
        instruction's encoder states may come read already (``text_states``, ``text_mask``:
        vla/fast_inference.py keeps them in static buffers) instead of ``instruction``."""
        device = batch["proprio"].device
        if "text_states" in batch:
            text_states, text_mask = batch["text_states"], batch["text_mask"]
        else:
            text_states, text_mask = self.text(batch["instruction"], device)
        views = []
        reads_pixels = self.reads_pixels(cached_keypoints="keypoint_coords" in batch)
        for i, camera in enumerate(self.config.cameras):
            if reads_pixels and CAMERA_KEYS[camera] not in batch:
                raise ValueError(
                    f"the policy reads cameras {self.config.cameras} but the observation has no "
                    f"{CAMERA_KEYS[camera]!r} (make the env with cameras={self.config.cameras})"
                )
            if self.vision is not None:
                images = batch[CAMERA_KEYS[camera]]
                if augment and self.config.augment_pad > 0:
                    images = random_shift(images, self.config.augment_pad)
                views.append(self.vision(images) + self.camera_embed[i])
            if self.keypoint_reader is not None and camera == "scene":
                if "keypoint_coords" in batch:  # read once by a frozen reader (trainer.cache_keypoints)
                    tokens, self._keypoint_logits = self.keypoint_reader.tokens(batch["keypoint_coords"]), None
                else:  # un-augmented: the keypoints' labels are the true image coordinates
                    reader = self.keypoint_reader
                    tokens, _, self._keypoint_logits = reader(batch["image"], text_states.detach(), text_mask)
                views.append(tokens + self.camera_embed[i])
        vision = torch.cat(views, 1) + self.type_embed[0]
        device = vision.device
        parts, masks = [vision], [torch.ones(vision.shape[:2], dtype=torch.bool, device=device)]
        if self.film_proj is not None:  # the instruction conditions every block instead of being read
            film = self.film_proj(sentence_embedding(text_states, text_mask).to(self.film_proj.weight.dtype))
            self._film = film.view(len(vision), self.config.layers, 4, self.config.width)
        else:
            text, text_mask = self._text_tokens(text_states, text_mask)
            parts.append(text + self.type_embed[1])
            masks.append(text_mask)
        if self.config.use_proprio:
            proprio = self._read_proprio(batch["proprio"])
            parts.append(self.proprio_proj(proprio).unsqueeze(1) + self.type_embed[2])
            masks.append(torch.ones(len(vision), 1, dtype=torch.bool, device=device))
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def freeze_outside_bc_loss(self) -> None:
        """Freeze what the behaviour-cloning loss never reads: the keypoint reader's abstain head
        (grounding trains it). BC is unchanged (no gradient reaches it either way), and
        DistributedDataParallel waits for a gradient of every trainable weight."""
        if self.keypoint_reader is not None and self.keypoint_reader.absent is not None:
            self.keypoint_reader.absent.requires_grad_(False)

    def reads_pixels(self, cached_keypoints: bool) -> bool:
        """Whether a forward pass needs the camera images: not when the keypoints arrive read
        (``batch["keypoint_coords"]``) and there is no ViT."""
        return self.vision is not None or not cached_keypoints

    def _text_tokens(self, text_states: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's text tokens and their mask: [sentence | words], [words] without the
        sentence token, or [sentence] without the words. The sentence mean runs over real
        tokens only, so padding stays invisible (V8)."""
        parts, masks = [], []
        if self.sentence_proj is not None:
            parts.append(self.sentence_proj(sentence_embedding(text_states, text_mask)).unsqueeze(1))
            masks.append(torch.ones(len(text_mask), 1, dtype=torch.bool, device=text_mask.device))
        if self.config.word_tokens:
            parts.append(self.text_proj(text_states))
            masks.append(text_mask)
        dtype = parts[-1].dtype
        return torch.cat([part.to(dtype) for part in parts], 1), torch.cat(masks, 1)

    def token_layout(self, batch: dict[str, Any]) -> list[tuple[str, int]]:
        """(segment name, number of tokens) of one forward pass, for printing (V1)."""
        _, mask = self.prefix(batch)
        vit_tokens = self.vision.num_tokens * len(self.config.cameras) if self.vision is not None else 0
        vision_tokens = vit_tokens + self.config.keypoints
        layout = [("vision", vision_tokens), ("text", mask.shape[1] - vision_tokens)]
        if self.config.use_proprio:
            layout[-1] = ("text", layout[-1][1] - 1)
            layout.append(("proprio", 1))
        return [*layout, ("action", len(self.action_position))]  # tokens: 7 per action; flow: 1

    def set_proprio_statistics(self, mean: Any, std: Any) -> None:
        """Standardise proprio with the training data's per-element mean and std (a floor on
        std keeps constant elements, e.g. a fixed quaternion part, from blowing up)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != (self.config.proprio_dim,) or std.shape != (self.config.proprio_dim,):
            raise ValueError(f"proprio statistics must have {self.config.proprio_dim} elements, got {mean.shape}")
        self.proprio_mean.copy_(mean)
        self.proprio_std.copy_(std.clamp_min(1e-2))

    def _read_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """The first ``proprio_dim`` elements, standardised: a model trained before the env
        reported more elements still reads what it was trained on."""
        d = self.config.proprio_dim
        if proprio.shape[-1] < d:
            raise ValueError(
                f"the model reads {d} proprio elements but the observation has {proprio.shape[-1]} "
                "(demos collected before the gripper velocity was recorded? collect them again)"
            )
        return (proprio[..., :d] - self.proprio_mean) / self.proprio_std

    # --- action inputs and masks ----------------------------------------------------------
    def _action_inputs(self, bins: torch.Tensor | None, batch_size: int, count: int) -> torch.Tensor:
        """Inputs at the first ``count`` action positions (start token, then previous actions)."""
        c = self.config
        position = self.action_position[:count] + self.type_embed[3]
        if c.decoding == "parallel":
            return self.start.expand(batch_size, count, -1) + position
        inputs = [self.start.expand(batch_size, 1, -1)]
        if count > 1:
            inputs.append(self.action_embed(bins[:, : count - 1]))
        return torch.cat(inputs, 1) + position

    @staticmethod
    def _mask(key_valid: torch.Tensor, prefix_length: int, query_start: int = 0, causal: bool = True) -> torch.Tensor:
        """(B, 1, Q, K) attention mask: prefix queries see the prefix; action queries see the
        prefix and the actions up to themselves (every action with ``causal=False``: the flow
        head denoises its chunk jointly); padded keys are never seen."""
        keys = key_valid.shape[1]
        q = torch.arange(query_start, keys, device=key_valid.device)[:, None]
        k = torch.arange(keys, device=key_valid.device)[None, :]
        later = (q >= prefix_length) & (k <= q) if causal else q >= prefix_length
        allowed = (k < prefix_length) | later
        return (allowed[None] & key_valid[:, None, :]).unsqueeze(1)

    def _run(self, x, mask, cache: KVCache | None = None, read_from: int = 0, last_mask=None) -> torch.Tensor:
        """The decoder over ``x``; returns the positions from ``read_from`` on (the last block
        computes only those: exact, and it skips most of a block when only the actions are read).
        ``last_mask``: the last block's own mask (a FlexAttention mask is built per query range)."""
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            own = last_mask if i == last and last_mask is not None else mask
            film = self._film[:, i] if self._film is not None else None
            x = block(x, own, cache, i, queries_from=read_from if i == last else 0, film=film)
        return x

    @torch.compiler.disable  # built eagerly, outside a compiled graph or a CUDA graph's capture
    def _flex_masks(self, key_valid: torch.Tensor, prefix_length: int, read_from: int) -> tuple[Any, Any]:
        """``_mask``'s rule as FlexAttention block masks, for every query and for the queries
        from ``read_from`` on (the last block's): one fused kernel that reads no dense mask.
        Without word tokens every key of every sample is valid, so the masks depend on the
        shapes alone: built once per shape and kept (a CUDA graph replays them as captured)."""
        from torch.nn.attention.flex_attention import create_block_mask

        b, n = key_valid.shape
        device = key_valid.device
        shared = not self.config.word_tokens  # no padded keys: one mask for the whole batch
        cache_key = (n, prefix_length, read_from, str(device))
        if shared and cache_key in self._flex_cache:
            return self._flex_cache[cache_key]

        def rule(offset: int):
            def allowed(batch, head, q, kv):
                q = q + offset
                causal = (kv < prefix_length) | ((q >= prefix_length) & (kv <= q))
                return causal if shared else causal & key_valid[batch, kv]

            return allowed

        rows = None if shared else b
        full = create_block_mask(rule(0), rows, None, n, n, device=device)
        masks = full, create_block_mask(rule(read_from), rows, None, n - read_from, n, device=device)
        if shared:
            self._flex_cache[cache_key] = masks
        return masks

    # --- training ------------------------------------------------------------------------
    def action_logits(self, batch: dict[str, Any], augment: bool = False) -> torch.Tensor:
        """Teacher-forced logits (B, action_dim, bins) for ``batch["action_bins"]``."""
        return self.head(self.action_states(batch, augment))

    def action_states(self, batch: dict[str, Any], augment: bool = False) -> torch.Tensor:
        """Final normalised states at the action positions (B, tokens, width), teacher-forced
        on ``batch["action_bins"]`` (B, tokens): the head turns them into logits, RL heads read
        them too. ``tokens`` is 7 per action, for 1 up to ``chunk`` actions: a chunked policy's
        first 7 states are the same whether or not the later actions are given (causal)."""
        self.require_token_head("action_states")
        bins = batch["action_bins"]
        d = bins.shape[1]
        c = self.config
        if d % c.action_dim or not 0 < d <= c.chunk * c.action_dim:
            raise ValueError(
                f"action_bins must hold 1 to {c.chunk} actions of {c.action_dim} tokens, got {d} tokens per row"
            )
        prefix, key_valid = self.prefix(batch, augment)
        b, p, _ = prefix.shape
        actions = self._action_inputs(bins, b, d)
        key_valid = torch.cat([key_valid, torch.ones(b, d, dtype=torch.bool, device=prefix.device)], 1)
        return self.norm(self._run(torch.cat([prefix, actions], 1), self._mask(key_valid, p), read_from=p))

    def start_state(self, batch: dict[str, Any]) -> torch.Tensor:
        """Final normalised state at the first action position, from the prefix and the start
        token only (B, width): equal to ``action_states(...)[:, 0]`` for any action bins, since
        action positions are causal (a value head reads it without choosing actions)."""
        self.require_token_head("start_state (PPO's value head)")
        x, _, mask = self.prefill_inputs(*self.prefix(batch))
        return self.norm(self._run(x, mask, read_from=x.shape[1] - 1)[:, -1])

    def forward(self, batch: dict[str, Any], augment: bool = True) -> dict[str, torch.Tensor]:
        """The training loss (so DistributedDataParallel can wrap the policy)."""
        return self.loss(batch, augment)

    def loss(self, batch: dict[str, Any], augment: bool = True) -> dict[str, torch.Tensor]:
        if self.flow is not None:
            states, out = self._flow_loss(batch, augment)
        else:
            states, out = self._token_loss(batch, augment)
        if self.keypoint_reader is not None and self.config.aux_weight > 0:
            if "key_uv" not in batch:
                raise ValueError("model.aux_weight > 0 needs demos that record key_positions (collect them anew)")
            if self._keypoint_logits is None:
                raise ValueError("cached keypoint coordinates leave no heatmaps to supervise: set model.aux_weight=0")
            aux, error_px = self.keypoint_reader.heatmap_loss(self._keypoint_logits, batch["key_uv"])
            out.update(aux_loss=aux, keypoint_error_px=error_px.detach())
            out.update(self._balance(out["action_loss"], aux))
        if self.key_position_head is not None:
            if "key_positions" not in batch:
                raise ValueError("model.aux_weight > 0 needs demos that record key_positions (collect them anew)")
            predicted = self.key_position_head(states[:, 0]).float()
            aux = F.mse_loss(predicted, batch["key_positions"] / KEY_POSITION_SCALE)
            out["aux_loss"] = aux
            # the mean position error in centimetres is what a reader can judge
            out["aux_error_cm"] = (predicted.detach() - batch["key_positions"] / KEY_POSITION_SCALE).abs().mean() * (
                100 * KEY_POSITION_SCALE
            )
            out.update(self._balance(out["action_loss"], aux))
        return out

    def _balance(self, action_loss: torch.Tensor, aux_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The total loss: fixed weights, or learned ones (model.loss_weighting=uncertainty)."""
        if self.loss_log_vars is None:
            return {"loss": action_loss + self.config.aux_weight * aux_loss}
        s = self.loss_log_vars
        weights = torch.exp(-s)
        total = weights[0] * action_loss + s[0] + weights[1] * aux_loss + s[1]
        return {"loss": total, "weight_action": weights[0].detach(), "weight_aux": weights[1].detach()}

    def _token_loss(self, batch: dict[str, Any], augment: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the action tokens (Gaussian labels with label_sigma > 0)."""
        states = self.action_states(batch, augment)
        logits = self.head(states)
        target = batch["action_bins"]
        labels = target.reshape(-1)
        if self.soft_labels is not None:
            labels = self.soft_labels[labels]
        token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="none")
        action_loss = _mean_over_valid(token_loss.view(len(target), -1, self.config.action_dim), batch)
        out = {"loss": action_loss, "action_loss": action_loss}
        # accuracy of the executed (first) action, comparable across chunk sizes
        first = self.config.action_dim
        out["token_accuracy"] = (logits[:, :first].argmax(-1) == target[:, :first]).float().mean()
        return states, out

    def _flow_loss(self, batch: dict[str, Any], augment: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow matching (vla/flow.py): the velocity's squared error at a random time of the
        straight path from noise to the demo chunk."""
        c = self.config
        bins = batch["action_bins"]
        if bins.shape[1] != c.chunk * c.action_dim:
            raise ValueError(
                f"the flow head denoises whole chunks: action_bins must hold {c.chunk} actions of "
                f"{c.action_dim} tokens, got {bins.shape[1]} tokens per row"
            )
        actions = bins_to_unit(bins, c.bins).view(len(bins), c.chunk, c.action_dim)
        noisy, t, target = flow_training_pair(actions)
        prefix, key_valid = self.prefix(batch, augment)
        states = self._flow_states(prefix, key_valid, noisy, t)
        flow_loss = _mean_over_valid((self.flow.velocity(states) - target).pow(2), batch)
        return states, {"loss": flow_loss, "action_loss": flow_loss}

    def _flow_states(
        self, prefix: torch.Tensor, key_valid: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Final normalised states (B, chunk, width) of the noisy chunk's tokens after the prefix."""
        b, p, _ = prefix.shape
        actions = self._flow_inputs(noisy, t, prefix.dtype)
        valid = torch.cat([key_valid, torch.ones(b, actions.shape[1], dtype=torch.bool, device=prefix.device)], 1)
        mask = self._mask(valid, p, causal=False)
        return self.norm(self._run(torch.cat([prefix, actions], 1), mask, read_from=p))

    def _flow_inputs(self, noisy: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The chunk's decoder inputs (B, chunk, width): noisy actions and time, at the action positions."""
        return self.flow.tokens(noisy, t).to(dtype) + self.action_position + self.type_embed[3]

    @torch.no_grad()
    def _flow_decode(self, batch: dict[str, Any], temperature: float, generator: torch.Generator | None):
        """Action bins (B, action_dim) of the first action of a chunk integrated from noise:
        ``temperature`` scales the starting noise (0: start at its mean, deterministic)."""
        c = self.config
        prefix, key_valid = self.prefix(batch)
        b, p, _ = prefix.shape
        cache = KVCache(len(self.blocks))  # the prefix's keys and values, computed once
        self._run(prefix, key_valid[:, None, None, :], cache, read_from=p - 1)
        valid = torch.cat([key_valid, torch.ones(b, c.chunk, dtype=torch.bool, device=prefix.device)], 1)
        mask = valid[:, None, None, :]  # each step's chunk tokens see the prefix and one another
        x = torch.zeros(b, c.chunk, c.action_dim, device=prefix.device)
        if temperature > 0:
            x = temperature * torch.randn(x.shape, device=x.device, generator=generator)
        for step in range(c.flow_steps):
            t = torch.full((b,), step / c.flow_steps, device=x.device)
            states = self.norm(self._run(self._flow_inputs(x, t, prefix.dtype), mask, cache.fork()))
            x = x + self.flow.velocity(states) / c.flow_steps
        return unit_to_bins(x[:, 0], c.bins)

    @property
    def decoded_tokens(self) -> int:
        """Action tokens after the prefix in one decoding pass: 7, or the flow head's chunk."""
        return self.config.chunk if self.flow is not None else self.config.action_dim

    def require_token_head(self, what: str) -> None:
        """A clear error where ``what`` reads action tokens a flow-head policy does not have."""
        if self.flow is not None:
            raise ValueError(f"{what} reads action tokens: this policy has model.action_head=flow (use tokens)")

    def require_plain_blocks(self, what: str) -> None:
        """A clear error where ``what`` runs the decoder blocks itself (not through ``_run``,
        which applies FiLM) or reads action tokens."""
        self.require_token_head(what)
        if self.film_proj is not None:
            raise ValueError(f"{what} runs the decoder blocks without FiLM: this policy has model.fusion=film")

    # --- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        batch: dict[str, Any],
        use_cache: bool = True,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        reuse_prefix: bool = True,
        scores: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action bins (B, action_dim): greedy (temperature 0) or sampled.

        ``scores=True`` also returns, from the same pass, the logits each token was chosen
        from (B, action_dim, bins) and the final state at the first action position (B, width):
        what PPO's rollout needs (log-prob and value) without a second, teacher-forced pass.
        ``use_cache=False`` recomputes the decoder over the whole sequence for every token;
        with ``reuse_prefix=False`` it also re-encodes the image and instruction each time,
        as a plain ``model(inputs)`` call per token would (the no-cache baselines of L1).
        """
        if self.flow is not None:
            if scores:
                raise ValueError("scores=True returns token logits: this policy has model.action_head=flow")
            return self._flow_decode(batch, temperature, generator)
        prefix, key_valid = self.prefix(batch)
        b, p, _ = prefix.shape
        d = self.config.action_dim
        ones = torch.ones(b, d, dtype=torch.bool, device=prefix.device)
        if self.config.decoding == "parallel":
            x = torch.cat([prefix, self._action_inputs(None, b, d)], 1)
            valid = torch.cat([key_valid, ones], 1)
            if self.flex_attention:
                full, last = self._flex_masks(valid, p, read_from=p)
                states = self.norm(self._run(x, full, read_from=p, last_mask=last))
            else:
                states = self.norm(self._run(x, self._mask(valid, p), read_from=p))
            logits = self.head(states)
            bins = _choose(logits, temperature, generator)
            return (bins, logits, states[:, 0]) if scores else bins
        bins = torch.zeros(b, d, dtype=torch.long, device=prefix.device)
        if not use_cache and scores:
            raise ValueError("scores=True reads the logits of one decoding pass: it needs use_cache=True")
        if not use_cache:  # recompute the whole sequence for every token (the L1 baseline)
            for i in range(d):
                if not reuse_prefix and i > 0:
                    prefix, key_valid = self.prefix(batch)
                x = torch.cat([prefix, self._action_inputs(bins, b, i + 1)], 1)
                valid = torch.cat([key_valid, ones[:, : i + 1]], 1)
                logits = self.head(self.norm(self._run(x, self._mask(valid, p))[:, -1:]))
                bins[:, i] = _choose(logits, temperature, generator)[:, 0]
            return bins
        cache = KVCache(len(self.blocks))
        x, valid, mask = self.prefill_inputs(prefix, key_valid)
        out = self._run(x, mask, cache, read_from=x.shape[1] - 1)  # prefill: prefix + start token
        start, steps = self.norm(out[:, -1]), []
        for i in range(d):
            steps.append(self.head(self.norm(out[:, -1:])))
            bins[:, i] = _choose(steps[-1], temperature, generator)[:, 0]
            if i + 1 < d:  # decode: one new token attends to everything cached
                valid = torch.cat([valid, ones[:, :1]], 1)
                out = self._run(self.next_token_input(bins[:, i : i + 1], i + 1), valid[:, None, None, :], cache)
        return (bins, torch.cat(steps, 1), start) if scores else bins

    # --- the pieces of incremental decoding (decode above, vla/paged_kv.py, the benchmark) ---
    def prefill_inputs(
        self, prefix: torch.Tensor, key_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefill's decoder inputs (the prefix and the start token, (B, P + 1, W)), their
        key mask (B, P + 1) and attention mask: what a KV cache is filled with first."""
        b, p, _ = prefix.shape
        x = torch.cat([prefix, self._action_inputs(None, b, 1)], 1)
        valid = torch.cat([key_valid, torch.ones(b, 1, dtype=torch.bool, device=prefix.device)], 1)
        return x, valid, self._mask(valid, p)

    def next_token_input(self, previous: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
        """(B, 1, W) input at action position ``index`` (one for all rows, or a tensor of one
        per row), fed the token chosen at the position before it (``previous``, (B, 1))."""
        position = self.action_position[index]
        if torch.is_tensor(index):
            position = position[:, None]
        return self.action_embed(previous) + position + self.type_embed[3]

    @torch.no_grad()
    def sentences(self, instructions: list[str], device: torch.device) -> torch.Tensor:
        """(B, D) the instructions' unit-length sentence embeddings, as the text encoder reads them."""
        states, mask = self.text(instructions, device)
        return sentence_embedding(states, mask)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint: a frozen pretrained text encoder reloads by name instead."""
        state = self.state_dict()
        if is_pretrained(self.config.text_encoder):
            state = {k: v for k, v in state.items() if not k.startswith("text.model.")}
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = is_pretrained(self.config.text_encoder)
        missing = [k for k in missing if not (frozen and k.startswith("text.model."))]
        # checkpoints from before the reader's calibrated threshold keep its default (0.5),
        # and those from before the known commands check none
        calibrated = ("keypoint_reader.scope_threshold", "known_commands.bank", "known_commands.threshold")
        missing = [k for k in missing if k not in calibrated]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


def _mean_over_valid(loss: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Mean of a per-element loss (B, actions, elements) over the actions the demo has: a chunk
    running past the episode's end has no label there (``batch["action_valid"]``, (B, actions))."""
    if "action_valid" not in batch:
        return loss.mean()
    weight = batch["action_valid"].float()[:, :, None].expand_as(loss)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits / temperature).softmax(-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.reshape(probs.shape[:-1])
