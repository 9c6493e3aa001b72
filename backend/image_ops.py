"""Image and mask maths shared by the models and the pipelines (one place for it)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .face_box import FACE_FEATHER, face_ellipse


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [B, C, H, W] map by area averaging.

    Area (not nearest) resampling keeps a feathered mask's soft edge soft at every resolution and
    keeps a small foreground region from vanishing at the coarsest feature map.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        # Upsampling an area map: bilinear keeps it smooth; only happens for tiny inputs.
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(x, size)


# --- PASD wavelet colour fix -------------------------------------------------------------------


def _atrous_blur(padded: torch.Tensor, radius: int, rows: int, cols: int) -> torch.Tensor:
    """The reference's [[1,2,1],[2,4,2],[1,2,1]] / 16 blur with dilation ``radius``, on a padded input.

    Done as two [1,2,1] passes of shifted slices: the kernel is separable, and on CPU this is two to three
    times faster than a dilated depthwise ``conv2d`` (the sums differ from it only in float rounding).
    """
    r = radius
    v = padded[..., :rows, :] + padded[..., 2 * r : 2 * r + rows, :]
    v.add_(padded[..., r : r + rows, :], alpha=2)
    h = v[..., :cols] + v[..., 2 * r : 2 * r + cols]
    h.add_(v[..., r : r + cols], alpha=2)
    return h.mul_(0.0625)


def _replicate_span(x: torch.Tensor, dim: int, start: int, stop: int, size: int, offset: int) -> torch.Tensor:
    """Image positions ``start:stop`` along ``dim`` of ``x`` (starting at ``offset``), clamped to the image.

    Positions outside ``[0, size)`` repeat the edge: replicate padding at any pad width, even wider than
    the image, where ``F.pad`` refuses. A view when nothing is outside, otherwise one concatenation.
    """
    inside_start, inside_stop = max(start, 0), min(stop, size)
    inside = x.narrow(dim, inside_start - offset, inside_stop - inside_start)
    if inside_start == start and inside_stop == stop:
        return inside
    parts = []
    if start < 0:
        edge = x.narrow(dim, -offset, 1)
        parts.append(edge.expand(*edge.shape[:dim], -start, *edge.shape[dim:][1:]))
    parts.append(inside)
    if stop > size:
        edge = x.narrow(dim, size - 1 - offset, 1)
        parts.append(edge.expand(*edge.shape[:dim], stop - size, *edge.shape[dim:][1:]))
    return torch.cat(parts, dim)


def _wavelet_lowpass(
    region: torch.Tensor,
    origin: tuple[int, int],
    target: tuple[int, int, int, int],
    image_size: tuple[int, int],
    levels: int,
) -> torch.Tensor:
    """Low-pass of the image rows/cols ``target`` (y0, y1, x0, x1) from ``region``, a crop at ``origin``.

    Each level blurs the previous one with dilation ``2**i`` and replicate padding *at the image border*.
    Padding repeats edges by clamped image coordinates, which (unlike ``F.pad``) works when the pad is
    larger than the image, and lets a tile reproduce the whole-image result: a tile's side that is inside
    the image loses ``2**i`` rows of its halo per level instead of being padded.
    """
    height, width = image_size
    y0, y1, x0, x1 = target
    radii = [2**i for i in range(levels)]
    top, left = origin
    for i, radius in enumerate(radii):
        rest = sum(radii[i + 1 :])  # halo still needed by the levels after this one
        out_top, out_bottom = max(0, y0 - rest), min(height, y1 + rest)
        out_left, out_right = max(0, x0 - rest), min(width, x1 + rest)
        padded = _replicate_span(region, -2, out_top - radius, out_bottom + radius, height, top)
        padded = _replicate_span(padded, -1, out_left - radius, out_right + radius, width, left)
        region = _atrous_blur(padded, radius, out_bottom - out_top, out_right - out_left)
        top, left = out_top, out_left
    return region


def _wavelet_color_fix_in_place(
    content: torch.Tensor, style: torch.Tensor, levels: int, band: int
) -> torch.Tensor:
    """The colour fix written back into ``content`` in full-width bands of rows, top to bottom.

    A band's low-pass needs ``halo`` original rows above it, which the previous band has already
    overwritten, so those rows are kept aside before each write. Extra memory: a few bands.
    """
    height, width = content.shape[-2:]
    halo = 2**levels - 1
    band = max(band, halo + 1)
    saved: torch.Tensor | None = None  # original rows [y0 - halo, y0)
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        top, bottom = max(0, y0 - halo), min(height, y1 + halo)
        below = content[..., y0:bottom, :]
        region = below if saved is None else torch.cat([saved, below], dim=-2)
        target = (y0, y1, 0, width)
        low_content = _wavelet_lowpass(region, (top, 0), target, (height, width), levels)
        low_style = _wavelet_lowpass(style[..., top:bottom, :], (top, 0), target, (height, width), levels)
        saved = content[..., max(0, y1 - halo) : y1, :].clone()
        content[..., y0:y1, :] = (content[..., y0:y1, :] - low_content + low_style).clamp_(0.0, 1.0)
    return content


def adain_color_fix(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN colour fix (SUPIR's ``adaptive_instance_normalization``): each channel of ``content``
    takes ``style``'s mean and standard deviation (unbiased variance + ``eps``, over the pixels).
    Coarser than the wavelet fix: one shift and scale per channel, so local colour casts stay."""
    if content.ndim != 4 or content.shape[:2] != style.shape[:2]:
        raise ValueError(
            f"content and style must be [B, C, H, W] alike, got {content.shape} and {style.shape}"
        )

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


def wavelet_color_fix(
    content: torch.Tensor,
    style: torch.Tensor,
    levels: int = 5,
    tile: int | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """PASD's wavelet colour fix: ``content`` keeps its detail and takes ``style``'s low frequencies.

    ``content - lowpass(content) + lowpass(style)``, the low-pass being ``levels`` à-trous levels as in the
    reference (``wavelet_reconstruction``); diffusion output drifts in colour, and this pulls its colours
    back to the input's while keeping the generated detail. Tensors are [B, C, H, W] floats of one shape.
    The result is clamped to [0, 1] as the reference's ``wavelet_color_fix`` does before anything else
    (about 0.5 % of values land outside, down to −0.26; a resize after would spread them, and float
    outputs would keep them). The reference also rounds to 8 bits there; we keep the precision.

    With ``tile``, the image is done in ``tile`` × ``tile`` pieces, each read with a halo of
    ``2**levels - 1`` pixels (the blurs' total reach), so the result equals the untiled one while the
    working memory follows the tile size, not the image's (only the output is image-sized). Tiles of a
    few hundred pixels are also about twice as fast on CPU as one whole large image (cache-sized buffers).
    With ``in_place``, the result is written into ``content`` in bands of ``tile`` rows (default 256)
    and no image-sized buffer is allocated at all; the numbers are the same.
    """
    if content.ndim != 4 or content.shape != style.shape:
        raise ValueError(
            f"content and style must be [B, C, H, W] of one shape, got {content.shape} and {style.shape}"
        )
    if not content.is_floating_point() or not style.is_floating_point():
        raise ValueError("wavelet_color_fix needs floating-point tensors")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    height, width = content.shape[-2:]
    style = style.to(content.dtype)
    if in_place:
        return _wavelet_color_fix_in_place(content, style, levels, tile or 256)
    if tile is None or (tile >= height and tile >= width):
        target = (0, height, 0, width)
        low_content = _wavelet_lowpass(content, (0, 0), target, (height, width), levels)
        low_style = _wavelet_lowpass(style, (0, 0), target, (height, width), levels)
        return (content - low_content + low_style).clamp_(0.0, 1.0)
    halo = 2**levels - 1
    out = torch.empty_like(content)
    for y0 in range(0, height, tile):
        y1 = min(height, y0 + tile)
        for x0 in range(0, width, tile):
            x1 = min(width, x0 + tile)
            top, left = max(0, y0 - halo), max(0, x0 - halo)
            rows, cols = slice(top, min(height, y1 + halo)), slice(left, min(width, x1 + halo))
            crop = (slice(None), slice(None), rows, cols)
            target = (y0, y1, x0, x1)
            low_content = _wavelet_lowpass(content[crop], (top, left), target, (height, width), levels)
            low_style = _wavelet_lowpass(style[crop], (top, left), target, (height, width), levels)
            # Same operation order as the untiled path, so tiles reproduce it bit for bit.
            out[..., y0:y1, x0:x1] = (content[..., y0:y1, x0:x1] - low_content + low_style).clamp_(0.0, 1.0)
    return out


# --- colour spaces ---------------------------------------------------------------------------------

# Rec.709 / sRGB primaries: relative luminance Y from linear-light RGB (the weights sum to 1).
REC709_WEIGHTS = (0.2126, 0.7152, 0.0722)
# Below this linear luminance a colour has no usable chromaticity (sRGB 1/255 in blue alone is ~2e-5).
_BLACK_Y = 1e-7


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values to linear light (IEC 61966-2-1), elementwise."""
    curve = ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= 0.04045, x / 12.92, curve)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light to sRGB-encoded values, elementwise (inverse of :func:`srgb_to_linear`)."""
    curve = 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, x * 12.92, curve)


def luminance(rgb_linear: torch.Tensor) -> torch.Tensor:
    """Relative luminance Y of linear-light RGB [..., 3, H, W] -> [..., 1, H, W]."""
    r, g, b = rgb_linear.unbind(dim=-3)
    y = REC709_WEIGHTS[0] * r + REC709_WEIGHTS[1] * g + REC709_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def transfer_colour(
    original: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor | None = None, rows: int = 256
) -> torch.Tensor:
    """:func:`_transfer_colour` in bands of ``rows`` rows: it is per pixel, and float64 maths on a
    whole scan would need several gigabytes."""
    if original.shape != colour.shape or original.ndim != 4 or original.shape[1] != 3:
        raise ValueError(
            f"original and colour must be [B, 3, H, W] of one shape, got {original.shape} and {colour.shape}"
        )
    out = torch.empty(original.shape, dtype=original.dtype)
    for y in range(0, original.shape[-2], rows):
        band = slice(y, y + rows)
        m = mask[..., band, :] if mask is not None else None
        out[..., band, :] = _transfer_colour(original[..., band, :], colour[..., band, :], m)
    return out


def _transfer_colour(
    original: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The colours of ``colour`` on the luminance of ``original``.

    Both are sRGB-encoded [B, 3, H, W] in [0, 1]; ``mask`` is [B, 1, H, W] in [0, 1] (1 = take colour).

    Colorization must not change the photo's tones, only add hue and chroma. This keeps what GIMP's
    "LCh Color" layer mode keeps: L* is a function of linear-light Y alone, so keeping Y exactly keeps the
    original's lightness and takes hue/chroma from ``colour``. Per pixel, in linear light:

    1. scale the colour's RGB by ``Y_orig / Y_colour`` (same chromaticity, original Y; grey where the
       colour is black and has no chromaticity);
    2. if a channel leaves [0, 1], move toward the grey ``(Y_orig,)*3`` by the largest factor that fits
       (that grey has the same Y, so Y stays exact while the hue is kept and only chroma is lost);
    3. blend ``orig + m * (new - orig)``: both ends have the same Y, so every blend does too.

    Where the mask is 0 the original is returned bit for bit. Worked in float64 so that the result's
    luminance matches to about 1e-7 after the cast back to the input's dtype.
    """
    orig = srgb_to_linear(original.to(torch.float64))
    col = srgb_to_linear(colour.to(torch.float64))
    y_orig = luminance(orig)
    y_col = luminance(col)
    has_colour = y_col > _BLACK_Y
    new = torch.where(has_colour, col * (y_orig / y_col.clamp(min=_BLACK_Y)), y_orig.expand_as(col))
    # Largest s in [0, 1] with grey + s * (new - grey) inside [0, 1] on every channel (closed form).
    d = new - y_orig
    up = torch.where(d > 0, (1 - y_orig) / d.clamp(min=1e-300), torch.ones_like(d))
    down = torch.where(d < 0, y_orig / (-d).clamp(min=1e-300), torch.ones_like(d))
    s = torch.minimum(up, down).amin(dim=-3, keepdim=True).clamp(0, 1)
    new = y_orig + s * d
    if mask is not None:
        m = mask.to(torch.float64)
        new = orig + m * (new - orig)
    out = linear_to_srgb(new.clamp(0, 1)).to(original.dtype)
    if mask is not None:
        out = torch.where(mask == 0, original, out)
    return out


def to_grey(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [B, 3, H, W] to the sRGB-encoded grey of the same luminance, [B, 1, H, W].

    Luminance in linear light, like :func:`transfer_colour`, so colorizing the grey version of a photo
    and transferring its colour gives back the photo's own tones.
    """
    return linear_to_srgb(luminance(srgb_to_linear(rgb))).clamp_(0, 1)


ResizeKind = Literal["image", "mask", "alpha"]


def resize(x: torch.Tensor, size: tuple[int, int], kind: ResizeKind = "image") -> torch.Tensor:
    """Resize a [B, C, H, W] float image to ``size`` (height, width).

    Images use antialiased bicubic (sharp when enlarging, no aliasing when shrinking), clamped to
    [0, 1]. Masks and alpha use area averaging when shrinking (a soft edge stays soft, a small region
    keeps its share) and bilinear when enlarging (no overshoot, so values stay in [0, 1]). The same
    size returns the input itself: no copy of a large image.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if kind == "image":
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    if kind not in ("mask", "alpha"):
        raise ValueError(f"unknown resize kind {kind!r}")
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


# --- bit depth -------------------------------------------------------------------------------------

_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def to_float(array: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels to float32 in [0, 1]; floats pass through as float32."""
    scale = _INT_MAX.get(array.dtype)
    if scale is not None:
        return (array.astype(np.float32) / np.float32(scale)).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise ValueError(f"unsupported pixel type {array.dtype}: expected uint8, uint16 or float")


def from_float(array: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Float pixels in [0, 1] to ``dtype``: integers are rounded and clipped; floats are only cast."""
    dtype = np.dtype(dtype)
    scale = _INT_MAX.get(dtype)
    if scale is not None:
        array = np.asarray(array)
        out = np.empty(array.shape, dtype=dtype)
        # In bands of rows: float64 temporaries of a whole 64-megapixel image would need gigabytes.
        rows = max(1, 2**20 // max(1, array[:1].size))
        for y in range(0, array.shape[0], rows):
            scaled = np.rint(np.asarray(array[y : y + rows], dtype=np.float64) * scale)
            out[y : y + rows] = np.clip(scaled, 0, scale)
        return out
    if np.issubdtype(dtype, np.floating):
        return np.asarray(array).astype(dtype, copy=False)
    raise ValueError(f"unsupported pixel type {dtype}: expected uint8, uint16 or float")


def face_mask(size: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Soft foreground of face boxes ``(x, y, w, h)`` over an H×W picture: feathered ellipses, not
    boxes, so a face's fidelity fades into its surroundings instead of leaving a visible seam."""
    height, width = size
    mask = np.zeros((height, width), np.float32)
    for x, y, w, h in boxes:
        cx, cy, ax, ay = face_ellipse(x, y, w, h)
        reach = 1.0 + FACE_FEATHER / 2
        x0, x1 = max(0, math.floor(cx - ax * reach)), min(width, math.ceil(cx + ax * reach) + 1)
        y0, y1 = max(0, math.floor(cy - ay * reach)), min(height, math.ceil(cy + ay * reach) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / ax
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / ay
        r = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        t = np.clip((reach - r) / FACE_FEATHER, 0.0, 1.0)
        soft = t * t * (3.0 - 2.0 * t)  # smoothstep: no kink where the edge starts or ends
        np.maximum(mask[y0:y1, x0:x1], soft, out=mask[y0:y1, x0:x1])
    return mask
