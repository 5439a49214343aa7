"""Turning a photo or scan of a digit or garment into what the model saw in training: uint8 [28, 28].

The way the datasets themselves were made: grey, light ink on a dark background, cropped to the ink, scaled to
fit a box, placed in 28x28.
  MNIST (LeCun et al.):    longer side 20 px, centre of mass at the centre of the 28x28 field.
  Fashion-MNIST (Zalando): longer side 28 px, bounding box centred.
A file that cannot be used raises ImageError with one line saying why.
"""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAX_PIXELS = 50_000_000  # checked from the header, before decoding: a phone photo is ~12 MP, a PNG "bomb" is not
WORK_SIDE = 2048  # larger images are shrunk to this longer side first (the result is 28 px anyway)
SIDE = 28


@dataclass(frozen=True)
class Layout:
    box: int  # the longer side of the ink is scaled to this many pixels
    centre: str  # "mass": centre of mass at the field's centre; "box": bounding box centred
    full_ink: bool  # stretch so the strongest ink is 255: MNIST's strokes were bilevel before anti-aliasing
    find_digit: bool  # crop to the digit's strokes, not to all ink: ruled lines and drawn frames are dropped


LAYOUTS = {
    "mnist": Layout(20, "mass", True, True),
    "fashion_mnist": Layout(28, "box", False, False),
}
# Any other set (an image folder, a Hub dataset): what its images of other sizes became in training (dataset_image).
OTHER = Layout(28, "box", False, False)
# strokes are grouped (connected components) on a copy at most this big: cheap, and enough
LABEL_SIDE = 256


class ImageError(Exception):
    """One input file that cannot be used, and why in a few words (predict reports it and goes on)."""


def read_grey(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any PIL-readable file -> float32 [H, W] in [0, 1] (0 = black), at most WORK_SIDE px on a side."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise ImageError(why_not_a_file(path))
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own limit below says it better
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(path)  # an ImageFile until the conversions below
        with img:
            w, h = img.size  # from the header: nothing is decoded yet
            if w * h > max_pixels:
                raise ImageError(
                    f"{w}x{h} is {w * h / 1e6:.3g} megapixels, above the limit of "
                    f"{max_pixels / 1e6:.3g} (--max-pixels); shrink it first"
                )
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale, far cheaper.
            img.draft("RGB", (WORK_SIDE, WORK_SIDE))
            # phone photos are stored sideways with a rotation tag
            return grey(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(
            "not an image file PIL can read (expected PNG, JPEG, BMP or GIF)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise ImageError(f"cannot decode the image ({type(e).__name__}: {e})") from None


def grey(img) -> np.ndarray:
    """A PIL image of any mode -> float32 [H, W] in [0, 1] (0 = black), at most WORK_SIDE px on a side: the
    pixels of a file (read_grey) or of the demo's sketchpad and upload box."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # A transparent background is paper: drawings exported from apps are ink on nothing, the ink dark or
        # light. Paper of the other brightness keeps it visible (white ink on white is nothing).
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, paper_for(rgba)), rgba)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: convert("L") would clip everything above 255 to white; scale the range instead.
        grey16 = np.asarray(img, dtype=np.float64)
        full = 65535.0 if img.mode != "I" or grey16.max() > 255 else 255.0
        img = Image.fromarray(np.round(np.clip(grey16 / full, 0, 1) * 255).astype(np.uint8), "L")
    img = img.convert("L")
    img.thumbnail((WORK_SIDE, WORK_SIDE))
    return np.asarray(img, dtype=np.float32) / 255.0


def why_not_a_file(path: Path) -> str:
    """What a path that is not a readable regular file is, in a few words."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if path.is_symlink():
            return f"a broken symlink (to {os.readlink(path)}, which does not exist)"
        return "no such file" if e.errno == errno.ENOENT else f"cannot be read ({e.strerror})"
    return "a folder, not a file" if path.is_dir() else "not a regular file"


def paper_for(rgba) -> str:
    """The background to put under a transparent image: black when its visible pixels (weighted by their alpha)
    are light on average, white when they are dark. Judged on a copy at most 256 px on a side."""
    probe = rgba.copy()
    probe.thumbnail((256, 256))
    alpha = np.asarray(probe.getchannel("A"), dtype=np.float64)
    grey = np.asarray(probe.convert("L"), dtype=np.float64)
    return "black" if alpha.sum() and (grey * alpha).sum() / alpha.sum() > 127.5 else "white"


def to_model_input(grey: np.ndarray, layout: Layout) -> np.ndarray:
    """float [H, W] in [0, 1], either polarity -> uint8 [28, 28] laid out like the training images."""
    # The background is the most common grey of the whole image (a frame along the edge would fool a look at
    # the border alone). The datasets are light ink on black: invert when the background is light.
    level = background_level(grey)
    ink, level = (1 - grey, 1 - level) if level > 0.5 else (grey, level)
    # Paper is never one flat grey: remove its level plus 3x its spread (median absolute deviation of the pixels
    # near it) so the background becomes exactly 0, as in the datasets. A flat background is left unchanged.
    paper = ink[np.abs(ink - level) < 0.1]
    floor = level + 3 * np.median(np.abs(paper - level))
    if ink.max() - floor < 0.05:
        raise ImageError("no ink found: the image is (nearly) one flat colour")
    ink = np.clip((ink - floor) / (1 - floor), 0, 1)
    if layout.find_digit:
        ink = digit_only(ink)

    # Crop to the ink. Pixels within 2% of the background do not count (Zalando's trim used 5%): JPEG
    # ringing around the edges would otherwise widen the box.
    ys, xs = np.nonzero(ink > 0.02)
    ink = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = ink.shape
    scale = layout.box / max(h, w)
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    # Antialiased resize: shrinking a 2000 px photo must average the strokes, not sample them.
    small = (
        F.interpolate(
            torch.from_numpy(np.ascontiguousarray(ink))[None, None],
            size=(h, w),
            mode="bicubic",
            antialias=True,
        )[0, 0]
        .clamp(0, 1)
        .numpy()
    )
    # after the resize: a thin pen stroke shrunk from a photo is faint until stretched
    if layout.full_ink:
        small = small / small.max()

    if layout.centre == "mass":
        total = max(small.sum(), 1e-6)
        cy = (small.sum(1) * np.arange(h)).sum() / total
        cx = (small.sum(0) * np.arange(w)).sum() / total
        top_px, left_px = round((SIDE - 1) / 2 - cy), round((SIDE - 1) / 2 - cx)
    else:
        # odd margins: one more px above/left, as Zalando did
        top_px, left_px = (
            (SIDE - h + 1) // 2,
            (SIDE - w + 1) // 2,
        )
    # A lopsided shape could be pushed off the field by centring its mass: keep it whole instead.
    top_px, left_px = min(max(top_px, 0), SIDE - h), min(max(left_px, 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top_px : top_px + h, left_px : left_px + w] = small
    return np.round(out * 255).astype(np.uint8)


def background_level(grey: np.ndarray) -> float:
    """The mode of a 64-bin histogram, refined to the median of the pixels in that bin and its neighbours."""
    counts, edges = np.histogram(grey, bins=64, range=(0.0, 1.0))
    k = int(np.argmax(counts))
    near = grey[(grey >= edges[max(k - 1, 0)]) & (grey <= edges[min(k + 2, 64)])]
    return float(np.median(near))


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0: background). Each ink pixel takes the smallest label
    among itself and its neighbours, then jumps to the label of the pixel its label names (labels are pixel
    indices, so this follows a chain in one step): a few dozen vectorised rounds instead of one per pixel."""
    h, w = mask.shape
    none = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), none)
    flat_index = np.flatnonzero(mask)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        smallest = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(smallest, padded[dy : dy + h, dx : dx + w], out=smallest)
        smallest = np.where(mask, smallest, none)
        flat = smallest.reshape(-1)
        # jump: the label of the pixel that the label names
        flat[flat_index] = flat[flat[flat_index] - 1]
        if np.array_equal(smallest, labels):
            return np.where(mask, labels, 0)
        labels = smallest


def digit_only(ink: np.ndarray) -> np.ndarray:
    """The digit's strokes, without the ruled lines and drawn frames around them (ink in [0, 1], 0 = none).

    Lines are straight runs across the whole image (a row or column that is nearly all ink); a frame is a group
    of strokes whose bounding box has ink along all four of its sides. Everything else is the digit: every
    stroke, touching the others or not (a 4 drawn in two strokes, a 5 whose bar was lifted), faint or not (the
    threshold is a quarter of the strongest ink), but specks under 2% of the heaviest stroke's ink. Works on a
    copy at most LABEL_SIDE px on a side.
    """
    h, w = ink.shape
    step = max(1, -(-max(h, w) // LABEL_SIDE))
    tensor = torch.from_numpy(ink.astype(np.float32))[None, None]
    small = F.avg_pool2d(tensor, step, ceil_mode=True)[0, 0].numpy() if step > 1 else ink
    mask = small > 0.25 * small.max()
    mask[mask.mean(1) > 0.9, :] = False  # ruled lines and frame sides that cross the whole image
    mask[:, mask.mean(0) > 0.9] = False
    labels = _components(mask)
    groups = []
    for lab in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == lab)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = labels[y0:y1, x0:x1] == lab
        band = max(1, min(y1 - y0, x1 - x0) // 20)
        sides = [box[:band].any(0), box[-band:].any(0), box[:, :band].any(1), box[:, -band:].any(1)]
        large = (y1 - y0) > 0.3 * mask.shape[0] and (x1 - x0) > 0.3 * mask.shape[1]
        framed = min(side.mean() for side in sides) > 0.8 and large and box.mean() < 0.35
        if not framed:
            groups.append((small[labels == lab].sum(), lab))
    if not groups:
        return ink  # nothing but lines: keep the image as it was rather than nothing
    heaviest = max(weight for weight, _ in groups)
    keep = [lab for weight, lab in groups if weight > 0.02 * heaviest]
    # The kept groups, grown by a pixel (the faint antialiased edge of a stroke is below the threshold).
    kept = torch.from_numpy(np.isin(labels, keep).astype(np.float32))[None, None]
    kept = F.max_pool2d(kept, 3, stride=1, padding=1)
    if step > 1:
        kept = F.interpolate(kept, scale_factor=step, mode="nearest")
    return ink * kept[0, 0, :h, :w].numpy()


def layout_for(dataset: str) -> Layout:
    """How predict and the demo lay out a file for a model trained on `dataset` (model.json's data.name)."""
    return LAYOUTS.get(dataset, OTHER)


def dataset_image(grey: np.ndarray) -> np.ndarray:
    """One image of a training set other than MNIST's and Fashion-MNIST's -> uint8 [28, 28]: a 28x28 one as it is
    (grey), any other size laid out as predict lays out a file for its model (OTHER); a blank one stays blank."""
    if grey.shape == (SIDE, SIDE):
        return np.round(grey * 255).astype(np.uint8)
    try:
        return to_model_input(grey, OTHER)
    except ImageError:  # no ink: nothing to crop to
        return np.zeros((SIDE, SIDE), np.uint8)


def preprocess(path: Path, layout: Layout, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file -> uint8 [28, 28] laid out like the training images of `layout`."""
    return to_model_input(read_grey(path, max_pixels), layout)
