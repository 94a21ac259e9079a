"""The test images the model got wrong with the highest confidence: kept on the device while testing, then drawn."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchmetrics import Metric

SHOWN = 64  # the most images the grid shows
ZOOM, COLUMNS = 3, 8  # pixels per image pixel, images per row
CELL_WIDTH, CAPTION = 104, 28  # room for "-> Ankle boot 100%"; two lines of caption (pixels, Pillow's own font)


class Misclassified(Metric):
    """The `k` wrongly classified images with the highest confidence, with their true and predicted classes.

    Each update keeps the top `k` of those kept so far and the batch's, without leaving the device (no per-step
    sync). Under DDP, `compute` gathers every rank's top `k` (torchmetrics' "cat") and keeps the top `k` of them.
    """

    full_state_update = False

    def __init__(self, k: int = SHOWN, image_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.k = k
        # Right answers and empty places hold confidence -1, so any wrong answer ranks above them.
        self.add_state("confidence", torch.full((k,), -1.0), dist_reduce_fx="cat")
        self.add_state("images", torch.zeros(k, *image_shape), dist_reduce_fx="cat")
        self.add_state("target", torch.zeros(k, dtype=torch.long), dist_reduce_fx="cat")
        self.add_state("predicted", torch.zeros(k, dtype=torch.long), dist_reduce_fx="cat")

    def update(self, images: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        confidence, predicted = logits.detach().float().softmax(1).max(1)
        confidence = confidence.masked_fill(predicted == target, -1.0)
        confidence, batch_top = confidence.topk(min(self.k, len(target)))
        pool = torch.cat([self.confidence, confidence])
        self.confidence, top = pool.topk(self.k)
        self.images = torch.cat([self.images, images[batch_top].float()])[top]
        self.target = torch.cat([self.target, target[batch_top]])[top]
        self.predicted = torch.cat([self.predicted, predicted[batch_top]])[top]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, true classes, predicted classes and confidences, most confident first; only wrong answers."""
        # After a DDP sync torchmetrics stacks every rank's states (world x k): flatten them into one pool.
        confidence, target, predicted = self.confidence.flatten(), self.target.flatten(), self.predicted.flatten()
        images = self.images.reshape(len(confidence), *self.images.shape[-3:])
        order = confidence.topk(min(self.k, len(confidence))).indices
        order = order[confidence[order] >= 0]
        return images[order], target[order], predicted[order], confidence[order]


def grid(
    images: torch.Tensor,
    target: torch.Tensor,
    predicted: torch.Tensor,
    confidence: torch.Tensor,
    classes: list[str],
    mean: float,
    std: float,
) -> np.ndarray:
    """An RGB image (height x width x 3, uint8): each image above its true class, then `-> predicted confidence`.

    `images` are normalized as the model sees them; `mean` and `std` undo that.
    """
    pixels = (images.float().cpu() * std + mean).clamp(0, 1).mul(255).byte()[:, 0].numpy()
    side = pixels.shape[-1] * ZOOM
    rows = -(-len(pixels) // COLUMNS)
    canvas = Image.new("RGB", (COLUMNS * CELL_WIDTH, rows * (side + CAPTION)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)
    captions = zip(target.tolist(), predicted.tolist(), confidence.tolist(), strict=True)
    for i, (image, (true, guess, p)) in enumerate(zip(pixels, captions, strict=True)):
        x, y = (i % COLUMNS) * CELL_WIDTH, (i // COLUMNS) * (side + CAPTION)
        canvas.paste(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST), (x + 2, y))
        draw.text((x + 2, y + side + 1), name(classes, true), fill="black", font=font)
        draw.text((x + 2, y + side + 14), f"-> {name(classes, guess)} {p:.0%}", fill=(200, 0, 0), font=font)
    return np.asarray(canvas)


def name(classes: list[str], index: int) -> str:
    """The class's name, or its number beyond the dataset's classes."""
    return classes[index] if index < len(classes) else str(index)
