"""A small Vision Transformer, trained from scratch: uint8 images -> patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vla.kernels import soft_argmax
from vla.language import sentence_embedding
from vla.transformer import Block

# Images enter as uint8 HWC; the ViT sees (x / 255 - 0.5) / 0.25, computed once here so no
# caller ever feeds 0-255 floats by mistake.
_MEAN, _STD = 0.5, 0.25


PATCH_EMBEDS = ("linear", "conv")


def conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """Two stride-2 3x3 convolutions, then a (patch/4)-sized patchify: the same token grid
    as a linear patch embedding, but with the locality prior that lets a ViT trained from
    scratch on a few thousand frames learn *where* things are in far fewer steps
    ("Early convolutions help transformers see better", Xiao et al. 2021)."""
    if patch_size % 4:
        raise ValueError(f"the conv patch embedding needs patch_size divisible by 4, got {patch_size}")
    return nn.Sequential(
        nn.Conv2d(3, width // 4, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(width // 4, width // 2, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(width // 2, width, patch_size // 4, stride=patch_size // 4),
    )


class ViT(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        pool: int = 1,
        patch_embed: str = "linear",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        grid = image_size // patch_size
        if grid % pool:
            raise ValueError(f"patch grid {grid} must be divisible by pool {pool}")
        if patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"unknown patch_embed {patch_embed!r}; valid values are: {', '.join(PATCH_EMBEDS)}")
        self.image_size, self.grid, self.pool = image_size, grid, pool
        if patch_embed == "conv":
            self.patch = conv_stem(patch_size, width)
        else:
            self.patch = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        # Where a patch is must survive into every token: the decoder reads *values* from the
        # vision tokens, so a target's location reaches the actions only through them. A fixed
        # 2-D sin-cos code of unit scale carries it from step 0 (a learned table starting at
        # 0.02 is drowned by the patch content for thousands of steps); a learned part refines it.
        self.register_buffer("fixed_position", sincos_2d(grid, width), persistent=False)
        self.position = nn.Parameter(torch.zeros(1, grid * grid, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    @property
    def num_tokens(self) -> int:
        return (self.grid // self.pool) ** 2

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, patches, width). The linear embedding is a strided convolution;
        computed as one matrix product over the flattened patches (the same weights and
        result), its backward costs a fifth of the convolution's on a CPU."""
        if not isinstance(self.patch, nn.Conv2d):  # the conv stem
            return self.patch(x).flatten(2).transpose(1, 2)
        b, c, h, w = x.shape
        p = self.patch.kernel_size[0]
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        return F.linear(patches, self.patch.weight.flatten(1), self.patch.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> tokens (B, num_tokens, width)."""
        if images.dtype != torch.uint8 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"images must be uint8 (B, {self.image_size}, {self.image_size}, 3), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - _MEAN) / _STD
        x = self.embed_patches(x) + self.fixed_position + self.position
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.pool > 1:  # average-pool neighbouring patch tokens: fewer tokens for the decoder
            b, _, w = x.shape
            x = x.transpose(1, 2).reshape(b, w, self.grid, self.grid)
            x = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)
        return x


# The ViT's linear layers that LoRA adapts: each block's attention in/out projections and MLP.
LORA_TARGETS = ["attn.qkv", "attn.out", "mlp.0", "mlp.2"]


def adapt_vit(vit: ViT, frozen_layers: int = 0, lora_rank: int = 0) -> None:
    """Cheaper fine-tuning of a pretrained ViT (V5). ``frozen_layers`` > 0: its patch embedding,
    positions and first ``frozen_layers`` blocks get no gradient (all of them: its final norm too),
    so the backward pass stops above them. ``lora_rank`` > 0: every ViT weight is frozen and each
    block's linear layers get LoRA adapters of that rank (peft), B zero-initialised so training
    starts from the pretrained features exactly."""
    if frozen_layers:
        frozen = [vit.patch, *vit.blocks[:frozen_layers]]
        if frozen_layers == len(vit.blocks):
            frozen.append(vit.norm)
        vit.position.requires_grad_(False)
        for module in frozen:
            module.requires_grad_(False)
    if lora_rank:
        from peft import LoraConfig, inject_adapter_in_model  # optional extra: pip install -e '.[lora]'

        # alpha = rank: the adapters' update is B @ A unscaled, whatever the rank
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS), vit)


def keyed_as_adapted(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved without adapters, keyed as ``module`` holds them: under LoRA a linear layer's
    own weights live in its ``base_layer`` (without adapters: ``state`` as it is)."""
    own = module.state_dict().keys()
    renamed = {}
    for key, value in state.items():
        layer, _, leaf = key.rpartition(".")
        base = f"{layer}.base_layer.{leaf}"
        renamed[base if key not in own and base in own else key] = value
    return renamed


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(1, grid*grid, width) fixed 2-D sine-cosine position code (as in MAE): half the channels
    encode the row, half the column, at geometrically spaced frequencies."""
    if width % 4:
        raise ValueError(f"width must be divisible by 4 for the 2-D position code, got {width}")
    quarter = width // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (rows.flatten(), cols.flatten()):
        angles = axis[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).unsqueeze(0)


def random_shift(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """DrQ-style augmentation: each image shifted by up to ``pad`` pixels in x and y, its edge
    rows and columns repeated into the gap (replication padding, then a crop back to size).
    Replication padding is index clamping, so the crop is one gather on the uint8 images."""
    b, h, w, _ = images.shape
    dx = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :] + dy[:, None] - pad).clamp(0, h - 1)
    cols = (torch.arange(w, device=images.device)[None, :] + dx[:, None] - pad).clamp(0, w - 1)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


class TextQueriedKeypoints(nn.Module):
    """Where in the image is what the instruction names? K soft-argmax keypoints.

    A small conv net (with two coordinate channels, CoordConv) turns the image into a
    half-resolution feature map; K learned queries attend over the instruction's token
    states, so each keypoint asks its own question of the sentence (keypoint 0: the object
    to act on, keypoint 1: where it must go); each scores every cell of the map, a softmax
    over cells gives K heatmaps, and their expected (u, v) coordinates become K extra tokens
    (Fourier features of u, v -> width). This is the spatial-softmax readout of visuomotor
    policies (Levine et al. 2016), asked by the instruction.

    ``heatmap_loss`` supervises the heatmaps with the true image coordinates (grounding
    pretraining on rendered scenes, then the demos). The policy feeds the coordinates to its
    decoder detached, so the action loss never pulls the detector away from the objects.

    ``sentence=True``: each question also reads the instruction's sentence embedding through
    its own projection, added to what it read from the words (see PolicyConfig.keypoint_sentence).
    """

    # The tokens made of the coordinates: behaviour cloning trains them, grounding does not.
    TOKEN_PARTS = ("embed.", "roles")

    def __init__(
        self,
        width: int,
        text_dim: int,
        keypoints: int,
        channels: int = 32,
        frequencies: int = 6,
        sentence: bool = False,
        abstain: bool = False,
    ):
        super().__init__()
        self.keypoints, self.channels = keypoints, channels
        self.features = nn.Sequential(
            nn.Conv2d(5, channels, 3, stride=2, padding=1),  # RGB + 2 coordinate channels
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.text_proj = nn.Linear(text_dim, width)
        self.questions = nn.Parameter(torch.randn(keypoints, width) * 0.02)
        self.read_text = nn.MultiheadAttention(width, 4, batch_first=True)
        self.query = nn.Linear(width, channels)
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(frequencies).float(), persistent=False)
        self.embed = nn.Sequential(nn.Linear(2 + 4 * frequencies, width), nn.GELU(), nn.Linear(width, width))
        # Which keypoint a token is (0: the target, 1: its destination). The decoder has no
        # positions over its prefix, so without it the two keypoint tokens are interchangeable:
        # it could not tell "go here first" from "bring it there".
        self.roles = nn.Parameter(torch.zeros(keypoints, width))
        # made last: without it every weight above starts as before (same random draws)
        self.read_sentence = nn.Linear(text_dim, keypoints * width) if sentence else None
        # abstain: each question may answer "nothing I name is in view", as one more cell
        # beside the map's whose logit the question alone sets; trained on instructions that
        # name absent or unknown objects, or nonsense (grounding.negatives)
        self.absent = nn.Linear(width, 1) if abstain else None
        if abstain:  # act stops above this "nothing named" probability; set after training (calibrate_scope)
            self.register_buffer("scope_threshold", torch.tensor(0.5))

    def heatmaps(
        self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, K, cells) over the half-resolution map and each cell's centre
        (cells, 2) in image coordinates [-1, 1] (u right, v down)."""
        return self.heatmaps_for(images, self.ask(text_states, text_mask))

    def heatmaps_for(self, images: torch.Tensor, questions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``heatmaps`` for questions already read from the instruction (``ask``)."""
        b, h, w, _ = images.shape
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - _MEAN) / _STD
        features = self.features(torch.cat([x, _pixel_grid(b, h, w, x.device)], 1))
        logits = self.query(questions) @ features.flatten(2) / self.channels**0.5
        cells = _pixel_grid(1, *features.shape[2:], x.device)[0].flatten(1).T
        return logits, cells

    def nothing_named(self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, K) probability that what each keypoint's question names is nowhere in view
        (the abstain cell's share of the heatmap softmax); needs ``abstain=True``."""
        if self.absent is None:
            raise ValueError("this keypoint reader was built without an abstain cell (model.scope_check=false)")
        questions = self.ask(text_states, text_mask)
        logits, _ = self.heatmaps_for(images, questions)
        return torch.cat([logits.float(), self.absent(questions).float()], -1).softmax(-1)[..., -1]

    def ask(self, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Each keypoint's question (B, K, width), read from the instruction's token states."""
        text = self.text_proj(text_states.float())
        questions = self.questions.expand(len(text), -1, -1)
        asked, _ = self.read_text(questions, text, text, key_padding_mask=~text_mask, need_weights=False)
        if self.read_sentence is not None:
            sentence = self.read_sentence(sentence_embedding(text_states, text_mask))
            asked = asked + sentence.view(len(asked), self.keypoints, -1).to(asked.dtype)
        return asked

    def forward(
        self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keypoint tokens (B, K, width) read from detached coordinates, the coordinates
        (B, K, 2), and the heatmap logits (B, K, cells) for ``heatmap_loss``."""
        logits, cells = self.heatmaps(images, text_states, text_mask)
        coords = soft_argmax(logits, cells)  # fused on a GPU at inference (vla/kernels.py)
        return self.tokens(coords), coords, logits

    def tokens(self, coords: torch.Tensor) -> torch.Tensor:
        """Keypoint tokens (B, K, width) from image coordinates (B, K, 2), read detached."""
        code = coords.detach().float()
        angles = code[..., None] * self.frequencies  # (B, K, 2, F)
        code = torch.cat([code, angles.sin().flatten(2), angles.cos().flatten(2)], -1)
        return self.embed(code) + self.roles

    def freeze_reading(self) -> None:
        """Stop training the part that reads the image (conv map, text queries): its
        coordinates of a demo step then never change and can be read once. The token
        embedding and the roles go on learning from the action loss."""
        for part in (self.features, self.text_proj, self.read_text, self.query, self.read_sentence, self.absent):
            if part is not None:
                part.requires_grad_(False)
        self.questions.requires_grad_(False)

    def heatmap_loss(
        self,
        logits: torch.Tensor,
        target_uv: torch.Tensor,
        absent_logits: torch.Tensor | None = None,
        named: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the heatmaps against a Gaussian around each true point (std one
        cell), and the mean distance of the soft-argmax from it in pixels at full resolution.
        A heatmap target gives every cell a gradient; regressing the soft-argmax alone gives
        a weak one and learned far slower in one-off trials.

        With ``absent_logits`` (B, K, 1) the abstain cell joins the softmax: where ``named``
        (B, K) is false, nothing the question names is in view and the abstain cell is the
        target; the distance is measured over the named keypoints only."""
        side = int(round(logits.shape[-1] ** 0.5))
        cells = _pixel_grid(1, side, side, logits.device)[0].flatten(1).T
        sigma = 2.0 / side
        distance2 = ((cells[None, None] - target_uv[:, :, None].float()) ** 2).sum(-1)  # (B, K, cells)
        target = (-distance2 / (2 * sigma**2)).softmax(-1)
        coords = logits.float().softmax(-1) @ cells
        if named is None:
            named = torch.ones(target_uv.shape[:2], dtype=torch.bool, device=logits.device)
        if absent_logits is not None:
            logits = torch.cat([logits.float(), absent_logits.float()], -1)
            target = torch.cat([target * named[..., None], (~named)[..., None].float()], -1)
        log_p = logits.float().log_softmax(-1)
        loss = -(target * log_p).sum(-1).mean()
        distance = (coords - target_uv).norm(dim=-1)
        error_px = distance[named].mean() * side  # [-1, 1] spans 2 x side pixels
        return loss, error_px


def _pixel_grid(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(B, 2, h, w) pixel-centre coordinates in [-1, 1]: u (right) then v (down)."""
    v, u = torch.meshgrid(
        (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1,
        (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1,
        indexing="ij",
    )
    return torch.stack([u, v]).expand(batch, 2, h, w)
