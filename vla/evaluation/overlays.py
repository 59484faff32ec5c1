"""Drawing what the policy looked at onto its own camera image: the keypoint heatmaps, the
decoder's attention over the patch grid, and the frames and stills made of them.

Overlays are blended at the policy's own resolution and then enlarged nearest-neighbour by
the demo page's ``policy_view`` (vla/demo/frames.py): a heatmap cell stays the 2 x 2 pixels
the reader scored and a patch the 16 x 16 the ViT embedded, nothing smoothed into detail
the model never had; the read keypoints (dots) and true ones (rings) are drawn as on the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from envs.video import annotate
from vla.demo.frames import KEYPOINT_COLOURS, VIEW_SIZE, policy_view

if TYPE_CHECKING:
    from vla.evaluation.inspection import Episode, StepView

ATTENTION_COLOUR = (255, 210, 0)
ATTENTION_FULL = 4.0  # a patch with this many times the uniform share (1 / patches) is fully tinted
MAX_ALPHA = 0.7  # opacity of an overlay where it peaks: the image stays readable under it
CAPTION_BAND = 14  # pixels above each panel of a still for its caption
SHORT_NAMES = {"scene patches": "image", "keypoints": "kp", "wrist patches": "wrist", "text": "text"}


def blend(image: np.ndarray, weight: np.ndarray, colour: tuple[int, int, int], full: float | None = None) -> np.ndarray:
    """``colour`` over ``image`` (H, W, 3) uint8 with opacity MAX_ALPHA x min(weight / full, 1)
    (``full`` None: the weight's maximum); ``weight`` (h, w) is enlarged to the image
    nearest-neighbour (a cell is a block of pixels)."""
    h, w = image.shape[:2]
    full = float(weight.max()) if full is None else full
    if full <= 0:
        return image
    alpha = Image.fromarray(np.minimum(weight / full, 1).astype(np.float32), mode="F").resize((w, h), Image.NEAREST)
    alpha = MAX_ALPHA * np.asarray(alpha)[..., None]
    return (image * (1 - alpha) + np.array(colour) * alpha).round().astype(np.uint8)


def heatmap_panel(view: StepView) -> np.ndarray:
    """The keypoint reader's heatmaps (target red, destination blue) and the true points
    (rings), enlarged to VIEW_SIZE. The soft-argmax dots go on the attention panel: a
    confident reader's heatmap is a cell or two, and a dot would hide it."""
    image = view.image
    for k, heatmap in enumerate(view.heatmaps if view.heatmaps is not None else []):
        image = blend(image, heatmap, KEYPOINT_COLOURS[k % 2])
    panel = policy_view(image, None, view.truth)
    return _caption(panel, "keypoint heatmaps" if view.heatmaps is not None else "no keypoint reader")


def attention_panel(view: StepView, layer: str = "") -> np.ndarray:
    """The action tokens' attention on the scene's tokens (summing to 1 over the patches and
    the keypoint tokens): each patch tinted by its share and labelled in percent where there
    is room, each keypoint token's share written beside its dot."""
    image = view.image
    if view.patches is not None:  # a fixed scale, not each frame's maximum: a flat map must look flat
        image = blend(image, view.patches, ATTENTION_COLOUR, full=ATTENTION_FULL / view.patches.size)
    panel = Image.fromarray(policy_view(image, view.read, np.zeros((0, 2))))
    draw = ImageDraw.Draw(panel)
    if view.patches is not None:
        cell = VIEW_SIZE / view.patches.shape[0]
        for (row, col), share in np.ndenumerate(view.patches):
            if cell >= 32:
                draw.text((col * cell + 3, row * cell + cell - 13), f"{100 * share:.0f}", fill=(255, 255, 255))
    for k, uv in enumerate(view.read if view.read is not None else []):
        x, y = (uv + 1) / 2 * VIEW_SIZE
        text = f"{100 * view.keypoint_attention[k]:.0f}%"
        draw.text((x + 6, y - 6 + 12 * k), text, fill=KEYPOINT_COLOURS[k % 2], stroke_width=1, stroke_fill=(0, 0, 0))
    return _caption(np.asarray(panel), f"decoder attention {layer}".strip())


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 6 * len(text) + 6, 13], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def shares_text(shares: dict[str, float]) -> str:
    return "attention " + " ".join(f"{SHORT_NAMES.get(k, k)} {100 * v:.0f}%" for k, v in shares.items())


def step_frame(episode: Episode, view: StepView) -> np.ndarray:
    """One video frame: the video camera, the heatmaps, the attention; text below."""
    status = view.message or ("success" if view.success else "running")
    lines = [
        f"{episode.task} seed {episode.seed}: {episode.instruction}",
        f"step {view.step}  tokens {' '.join(map(str, view.tokens))}  {status}",
        shares_text(view.shares),
    ]
    panels = [view.pretty, heatmap_panel(view), attention_panel(view, episode.layer)]
    return below(np.concatenate(panels, 1), lines)


def below(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """``lines`` of text on a dark band added under ``image`` (``annotate`` draws over the
    bottom rows, which here hold the panels' lower edge)."""
    return annotate(np.pad(image, ((0, 12 * len(lines) + 4), (0, 0), (0, 0))), lines)


def episode_frames(episode: Episode, hold: int = 10) -> list[np.ndarray]:
    """Every step's frame, the last one held ``hold`` frames longer."""
    frames = [step_frame(episode, view) for view in episode.views]
    return frames + [frames[-1]] * hold


def still(episode: Episode, count: int = 4) -> np.ndarray:
    """``count`` evenly spaced steps side by side (first and last included), one column each:
    the video camera, the heatmaps, the attention; the instruction and outcome below."""
    picks = np.unique(np.linspace(0, len(episode.views) - 1, count).round().astype(int))
    columns = []
    for i in picks:
        view = episode.views[i]
        column = np.concatenate([view.pretty, heatmap_panel(view), attention_panel(view, episode.layer)], 0)
        label = Image.new("RGB", (column.shape[1], CAPTION_BAND), (255, 255, 255))
        ImageDraw.Draw(label).text((3, 1), f"step {view.step}" + (" (solved)" if view.success else ""), fill=(0, 0, 0))
        columns.append(np.concatenate([np.asarray(label), column], 0))
    grid = np.concatenate(columns, 1)
    last = episode.views[-1]
    outcome = f"solved at step {episode.success_step}" if episode.success_step is not None else "not solved"
    mean = {name: float(np.mean([v.shares[name] for v in episode.views])) for name in last.shares}
    lines = [
        f"{episode.task} seed {episode.seed}: {episode.instruction} ({outcome})",
        shares_text(mean) + " (mean over steps)",
    ]
    return below(grid, lines)
