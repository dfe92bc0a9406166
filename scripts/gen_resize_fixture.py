#!/usr/bin/env python3
"""Generate the Pillow-parity fixtures for `src/data/preprocess.rs`.

Writes `tests/fixtures/resize/`:

* `cases.json` -- manifest, a list of objects
  `{"name", "kind", "src_w", "src_h", "channels", "dst_w", "dst_h", "src",
    "src_fnv1a64", "dst"}` (one case per line)
  where `kind` is `"resize"` (dst = raw interleaved u8 output of Pillow's
  `img.resize((dst_w, dst_h), Image.BICUBIC)`) or `"clip_preprocess"` (dst =
  raw little-endian f32, CHW, 3 x size x size, the torchvision/CLIP pipeline
  computed with numpy from Pillow's resized bytes; `size` is an extra key).
* one `<name>.<ext>` output file per case.

Source images are *not* stored: raw sources for the required sizes alone would
exceed the 2 MB budget of the fixture folder.  Instead `src` is a recipe
`{"pattern": "noise" | "gradient" | "mixed", "seed": int}` for a procedural
image built from integer arithmetic only (a splitmix64 hash for noise, integer
ramps for gradients), so the Rust test regenerates the identical bytes
(`gen_source` in the test module of `src/data/preprocess.rs` mirrors
`gen_source` below -- keep the two in sync).  A checksum of every generated
source is stored as `src_fnv1a64` (64-bit FNV-1a, hex) so a drift between the two generators shows
up as a clear error rather than as a resize mismatch.  The Pillow and numpy
versions are recorded in `tests/fixtures/resize/README.md`.

Usage (Pillow + numpy needed, e.g. in a throwaway venv):

    python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
    /tmp/pilvenv/bin/python scripts/gen_resize_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gen_source(pattern: str, seed: int, w: int, h: int, ch: int) -> np.ndarray:
    """Procedural u8 image of shape (h, w, ch); integer arithmetic only.

    noise:    byte = top 8 bits of splitmix64((seed << 32) ^ flat_index)
    gradient: channel c of pixel (x, y) is an integer ramp
              c % 3 == 0: x*255 // (w-1)
              c % 3 == 1: y*255 // (h-1)
              c % 3 == 2: (x*x + y*y)*255 // ((w-1)^2 + (h-1)^2)
              (denominators clamped to >= 1)
    mixed:    gradient, overwritten by noise where (x//8 + y//8) % 3 == 0,
              then by hard vertical lines (x % 16 == 5 -> 255, x % 16 == 6 -> 0)
              and a hard horizontal line (y % 16 == 11 -> 255) to provoke
              bicubic over/undershoot and hence the clip to 0..255.
    """
    with np.errstate(over="ignore"):
        y, x, c = np.meshgrid(
            np.arange(h, dtype=np.uint64),
            np.arange(w, dtype=np.uint64),
            np.arange(ch, dtype=np.uint64),
            indexing="ij",
        )
        idx = (y * np.uint64(w) + x) * np.uint64(ch) + c
        noise = (splitmix64((np.uint64(seed) << np.uint64(32)) ^ idx) >> np.uint64(56)).astype(
            np.uint8
        )
    xi = x.astype(np.int64)
    yi = y.astype(np.int64)
    ci = c.astype(np.int64)
    dx = max(w - 1, 1)
    dy = max(h - 1, 1)
    dr = max((w - 1) ** 2 + (h - 1) ** 2, 1)
    g0 = xi * 255 // dx
    g1 = yi * 255 // dy
    g2 = (xi * xi + yi * yi) * 255 // dr
    grad = np.where(ci % 3 == 0, g0, np.where(ci % 3 == 1, g1, g2)).astype(np.uint8)
    if pattern == "noise":
        return noise
    if pattern == "gradient":
        return grad
    if pattern == "mixed":
        out = grad.copy()
        blocks = ((xi // 8 + yi // 8) % 3) == 0
        out[blocks] = noise[blocks]
        out[(xi % 16) == 5] = 255
        out[(xi % 16) == 6] = 0
        out[(yi % 16) == 11] = 255
        return out
    raise ValueError(pattern)


def fnv1a64(data: bytes) -> str:
    """64-bit FNV-1a of `data` as 16 lowercase hex digits."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def to_pil(arr: np.ndarray) -> Image.Image:
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0])  # mode "L"
    return Image.fromarray(arr)  # mode "RGB"


def from_pil(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return a


def clip_resize_dims(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision `_compute_resized_output_size` for an int size (max_size=None)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def clip_preprocess_reference(arr: np.ndarray, size: int) -> np.ndarray:
    """CLIP `_transform(size)` on a PIL RGB image, in numpy f32 (CHW)."""
    img = to_pil(arr)
    w, h = img.size
    nw, nh = clip_resize_dims(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    # torchvision CenterCrop (no padding needed after the resize)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    # ToTensor: u8 -> f32 / 255 ; Normalize: (x - mean) / std, all in f32
    t = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    t = t / np.float32(255)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CLIP_STD, dtype=np.float32)[:, None, None]
    t = (t - mean) / std
    assert t.dtype == np.float32
    return t


# (name, pattern, seed, src_w, src_h, channels, dst_w, dst_h)
RESIZE_CASES = [
    ("cifar_32x32_to_224x224", "noise", 1, 32, 32, 3, 224, 224),
    ("mnist_28x28_to_224x224", "mixed", 2, 28, 28, 3, 224, 224),
    ("up_300x200_to_336x224", "gradient", 3, 300, 200, 3, 336, 224),
    ("mixdown_260x250_to_232x224", "noise", 4, 260, 250, 3, 232, 224),
    ("downup_450x230_to_438x224", "mixed", 5, 450, 230, 3, 438, 224),
    ("odd_37x53_to_224x320", "noise", 6, 37, 53, 3, 224, 320),
    ("down_500x375_to_298x224", "mixed", 7, 500, 375, 3, 298, 224),
    # small extras: grayscale, heavy downsample, Pillow's tall-image branch
    ("gray_16x16_to_24x24", "mixed", 8, 16, 16, 1, 24, 24),
    ("heavydown_500x375_to_24x18", "mixed", 9, 500, 375, 3, 24, 18),
    ("tall_2x300_to_3x40", "noise", 10, 2, 300, 3, 3, 40),
]

CLIP_CASE = ("clip_preprocess", "mixed", 5, 450, 230, 224)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUT_DIR.iterdir():
        if old.suffix in (".rgb", ".gray", ".f32") or old.name in ("cases.json", "README.md"):
            old.unlink()

    manifest = []
    for name, pattern, seed, sw, sh, ch, dw, dh in RESIZE_CASES:
        src = gen_source(pattern, seed, sw, sh, ch)
        out = from_pil(to_pil(src).resize((dw, dh), Image.BICUBIC))
        assert out.shape == (dh, dw, ch), (name, out.shape)
        fname = f"{name}.{'gray' if ch == 1 else 'rgb'}"
        (OUT_DIR / fname).write_bytes(out.tobytes())
        manifest.append(
            {
                "name": name,
                "kind": "resize",
                "src_w": sw,
                "src_h": sh,
                "channels": ch,
                "dst_w": dw,
                "dst_h": dh,
                "src": {"pattern": pattern, "seed": seed},
                "src_fnv1a64": fnv1a64(src.tobytes()),
                "dst": fname,
            }
        )

    name, pattern, seed, sw, sh, size = CLIP_CASE
    src = gen_source(pattern, seed, sw, sh, 3)
    t = clip_preprocess_reference(src, size)
    assert t.shape == (3, size, size)
    fname = f"{name}_{sw}x{sh}_{size}.f32"
    (OUT_DIR / fname).write_bytes(t.astype("<f4").tobytes())
    manifest.append(
        {
            "name": name,
            "kind": "clip_preprocess",
            "src_w": sw,
            "src_h": sh,
            "channels": 3,
            "size": size,
            "dst_w": size,
            "dst_h": size,
            "src": {"pattern": pattern, "seed": seed},
            "src_fnv1a64": fnv1a64(src.tobytes()),
            "dst": fname,
        }
    )

    (OUT_DIR / "README.md").write_text(
        "Generated by scripts/gen_resize_fixture.py with Pillow "
        f"{PIL.__version__}, numpy {np.__version__}; checked by the tests in "
        "src/data/preprocess.rs. Sources are procedural (see the script).\n"
    )
    (OUT_DIR / "cases.json").write_text(
"[\n" + ",\n".join(json.dumps(c) for c in manifest) + "\n]\n"
    )
    total = sum(p.stat().st_size for p in OUT_DIR.iterdir() if p.is_file())
    print(f"wrote {len(manifest)} cases to {OUT_DIR} ({total} bytes, Pillow {PIL.__version__})")
    assert total < 2_000_000, total


if __name__ == "__main__":
    main()
