//! CLIP image preprocessing, bit-exact with the reference Python stack.
//!
//! OpenAI CLIP preprocesses images with
//!
//! ```text
//! Compose([Resize(n_px, interpolation=BICUBIC), CenterCrop(n_px),
//!          convert("RGB"), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])
//! ```
//!
//! applied to a PIL image, so the resize is *Pillow's* bicubic resampler
//! (`src/libImaging/Resample.c`), not torch's interpolate. This module
//! reimplements each step so its output matches that pipeline exactly:
//!
//! * [`resize_bicubic_pillow`]: Pillow's `Image.resize(size, BICUBIC)` on
//!   8-bit images, byte for byte (same f64 coefficient computation, same
//!   22-bit fixed-point rounding, same pass order and intermediate u8 rounding);
//! * [`clip_resize_dims`]: torchvision's short-side rule;
//! * [`center_crop`]: torchvision's `CenterCrop` offsets (Python's round-half-even)
//!   including its zero padding for crops larger than the image;
//! * [`clip_preprocess`]: the whole chain, with `ToTensor`/`Normalize` done in
//!   f32 exactly as torch does (`x / 255`, then `(x - mean) / std`).
//!
//! The fixtures in `tests/fixtures/resize/` come from
//! `scripts/gen_resize_fixture.py` (real Pillow + numpy) and the tests
//! below check equality against them.
//!
//! # Pillow's bicubic resampler in short
//!
//! The resize is separable. For each axis, and for each output index `i`, a
//! window of input taps and its weights are precomputed once (in f64):
//!
//! * `scale = in_size / out_size`, `filterscale = max(scale, 1)`: when
//!   shrinking, the kernel is stretched by the scale (antialiasing); when
//!   enlarging it is the plain kernel.
//! * `support = 2.0 * filterscale` (bicubic kernel radius is 2).
//! * `center = (i + 0.5) * scale`; the taps are the input indices
//!   `xmin .. xmin + n` with `xmin = max(trunc(center - support + 0.5), 0)`
//!   and `xmin + n = min(trunc(center + support + 0.5), in_size)`. The window
//!   is simply cut at the image border (no mirroring/clamping of pixels); the
//!   renormalisation below makes the surviving weights sum to 1.
//! * the weight of tap `x` is `K((x - center + 0.5) / filterscale)` with the
//!   Keys cubic `K` for `a = -0.5`; the weights are then divided by their sum.
//!
//! For 8-bit images the f64 weights are converted to fixed point with
//! `PRECISION_BITS = 32 - 8 - 2 = 22` fractional bits, rounding half away from
//! zero (`trunc(w * 2^22 ± 0.5)`), and every output sample is
//! `clamp((2^21 + Σ pixel·weight) >> 22, 0, 255)` computed in `i32`
//! (the `2^21` makes the arithmetic shift round to nearest). Two extra bits of
//! headroom cover the negative lobes, so the sum cannot overflow.
//!
//! Pass order: horizontal first, into an intermediate **u8** image (so the
//! result is rounded between passes), then vertical. A pass is skipped when its
//! dimension does not change, and the horizontal pass only produces the source
//! rows that the vertical windows actually touch (Pillow's `ybox` trick; a pure
//! speed-up). Exception, mirrored here: Pillow's `Image.resize` runs the
//! vertical pass *first* when `src_h > 100 * src_w` and the height shrinks.
//! `Image.resize` with the default `reducing_gap=None` does not use
//! `Image.reduce`, so there is no pre-reduction step to reproduce.

use std::borrow::Cow;

/// CLIP normalisation mean (RGB). torchvision builds the tensor from Python
/// floats (f64) and casts to f32, hence the `f64 as f32` round trip.
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];

/// CLIP normalisation standard deviation (RGB), see [`CLIP_MEAN`].
pub const CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

/// Fractional bits of Pillow's 8-bit fixed-point coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding bias added before the final `>> PRECISION_BITS`.
const ROUND_BIAS: i32 = 1 << (PRECISION_BITS - 1);
/// Radius of the bicubic kernel in input pixels at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys cubic convolution kernel with `a = -0.5` (Pillow's `bicubic_filter`).
/// The expressions keep Pillow's evaluation order so the f64 results agree to
/// the last bit.
#[inline]
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `clip8`: arithmetic shift out the fraction, saturate to u8.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Fixed-point tap windows for one axis (Pillow's `precompute_coeffs` followed
/// by `normalize_coeffs_8bpc`).
struct AxisCoeffs {
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index; only the first `taps` are meaningful.
    weights: Vec<i32>,
    ksize: usize,
}

impl AxisCoeffs {
    fn new(in_size: usize, out_size: usize) -> Self {
        assert!(in_size > 0 && out_size > 0, "resize: empty axis");
        // Pillow: `(double)(in1 - in0) / outSize` with the box (0, in_size);
        // the float subtraction is exact for any realistic size.
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut window = vec![0f64; ksize];
        for (i, fixed) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's `(int)`; negatives clamp to 0.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xend = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = xend - xmin;
            let window = &mut window[..taps];
            let mut total = 0.0;
            for (t, w) in window.iter_mut().enumerate() {
                *w = bicubic_kernel(((xmin + t) as f64 - center + 0.5) * inv_filterscale);
                total += *w;
            }
            if total != 0.0 {
                for w in window.iter_mut() {
                    *w /= total;
                }
            }
            // Round half away from zero onto the 22-bit grid.
            let one = (1i64 << PRECISION_BITS) as f64;
            for (f, &w) in fixed.iter_mut().zip(window.iter()) {
                *f = if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                };
            }
            bounds.push((xmin, taps));
        }
        AxisCoeffs {
            bounds,
            weights,
            ksize,
        }
    }

    /// First input index and the fixed-point weights of output index `i`.
    #[inline(always)]
    fn window(&self, i: usize) -> (usize, &[i32]) {
        let (start, taps) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + taps])
    }

    /// Half-open range of input indices touched by any output index.
    fn input_span(&self) -> (usize, usize) {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        (first, last)
    }
}

/// Horizontal pass over the source rows `row_first..row_first + out.len()/(dst_w*C)`.
fn horizontal_pass<const C: usize>(
    src: &[u8],
    src_w: usize,
    row_first: usize,
    coeffs: &AxisCoeffs,
    dst_w: usize,
    out: &mut [u8],
) {
    let in_stride = src_w * C;
    for (r, out_row) in out.chunks_exact_mut(dst_w * C).enumerate() {
        let in_row = &src[(row_first + r) * in_stride..(row_first + r + 1) * in_stride];
        for (x, out_px) in out_row.chunks_exact_mut(C).enumerate() {
            let (start, k) = coeffs.window(x);
            let mut acc = [ROUND_BIAS; C];
            for (px, &w) in in_row[start * C..].chunks_exact(C).zip(k) {
                for c in 0..C {
                    acc[c] += i32::from(px[c]) * w;
                }
            }
            for c in 0..C {
                out_px[c] = clip8(acc[c]);
            }
        }
    }
}

fn horizontal_pass_dyn(
    channels: usize,
    src: &[u8],
    src_w: usize,
    row_first: usize,
    coeffs: &AxisCoeffs,
    dst_w: usize,
    out: &mut [u8],
) {
    match channels {
        1 => horizontal_pass::<1>(src, src_w, row_first, coeffs, dst_w, out),
        2 => horizontal_pass::<2>(src, src_w, row_first, coeffs, dst_w, out),
        3 => horizontal_pass::<3>(src, src_w, row_first, coeffs, dst_w, out),
        4 => horizontal_pass::<4>(src, src_w, row_first, coeffs, dst_w, out),
        _ => unreachable!("channels checked by the caller"),
    }
}

/// Vertical pass. Channels are independent, so a row is just `row_len` bytes.
/// `row_offset` is subtracted from the window starts (the intermediate image
/// may start at source row `row_offset`). Whole rows are accumulated at once
/// so the inner loop is a contiguous multiply-add the compiler vectorises.
///
/// This pass dominates the cost of upsampling (e.g. 32 → 224), and baseline
/// x86-64 (SSE2) has no packed 32-bit multiply, so on x86-64 an AVX2 build of
/// the same code is selected at run time when the CPU supports it. Both builds
/// do identical integer arithmetic.
fn vertical_pass(
    src: &[u8],
    row_len: usize,
    row_offset: usize,
    coeffs: &AxisCoeffs,
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { vertical_pass_avx2(src, row_len, row_offset, coeffs, out) };
            return;
        }
    }
    vertical_pass_impl(src, row_len, row_offset, coeffs, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_pass_avx2(
    src: &[u8],
    row_len: usize,
    row_offset: usize,
    coeffs: &AxisCoeffs,
    out: &mut [u8],
) {
    vertical_pass_impl(src, row_len, row_offset, coeffs, out);
}

#[inline(always)]
fn vertical_pass_impl(
    src: &[u8],
    row_len: usize,
    row_offset: usize,
    coeffs: &AxisCoeffs,
    out: &mut [u8],
) {
    let mut acc = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = coeffs.window(y);
        let start = start - row_offset;
        acc.fill(ROUND_BIAS);
        for (t, &w) in k.iter().enumerate() {
            let in_row = &src[(start + t) * row_len..(start + t + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
            *o = clip8(a);
        }
    }
}

/// Resize an interleaved 8-bit image exactly like Pillow's
/// `Image.resize((dst_w, dst_h), Image.BICUBIC)` (default `box`, default
/// `reducing_gap=None`).
///
/// `channels` is 1 (mode "L") or 3 (mode "RGB"); 2 and 4 are accepted and
/// resampled per channel, which matches Pillow for modes without alpha
/// premultiplication (e.g. "RGBX", "CMYK") but *not* "RGBA"/"LA", which
/// `Image.resize` premultiplies first. Same-size requests return a copy, as
/// Pillow does. See the module docs for the arithmetic.
///
/// # Panics
/// If a dimension is zero, `channels` is not 1..=4, or `src.len()` is not
/// `src_w * src_h * channels`.
pub fn resize_bicubic_pillow(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    channels: usize,
    dst_w: usize,
    dst_h: usize,
) -> Vec<u8> {
    assert!(
        (1..=4).contains(&channels),
        "resize: unsupported channel count {channels}"
    );
    assert!(
        src_w > 0 && src_h > 0 && dst_w > 0 && dst_h > 0,
        "resize: empty image"
    );
    assert_eq!(
        src.len(),
        src_w * src_h * channels,
        "resize: buffer size mismatch"
    );

    let need_h = dst_w != src_w;
    let need_v = dst_h != src_h;
    if !need_h && !need_v {
        return src.to_vec();
    }

    // Image.resize: very tall images that shrink vertically are resized
    // vertically first (two calls to the core resampler).
    if src_h > src_w * 100 && dst_h < src_h {
        let vc = AxisCoeffs::new(src_h, dst_h);
        let mut tmp = vec![0u8; src_w * dst_h * channels];
        vertical_pass(src, src_w * channels, 0, &vc, &mut tmp);
        if !need_h {
            return tmp;
        }
        let hc = AxisCoeffs::new(src_w, dst_w);
        let mut out = vec![0u8; dst_w * dst_h * channels];
        horizontal_pass_dyn(channels, &tmp, src_w, 0, &hc, dst_w, &mut out);
        return out;
    }

    if !need_h {
        let vc = AxisCoeffs::new(src_h, dst_h);
        let mut out = vec![0u8; dst_w * dst_h * channels];
        vertical_pass(src, src_w * channels, 0, &vc, &mut out);
        return out;
    }

    let hc = AxisCoeffs::new(src_w, dst_w);
    if !need_v {
        let mut out = vec![0u8; dst_w * dst_h * channels];
        horizontal_pass_dyn(channels, src, src_w, 0, &hc, dst_w, &mut out);
        return out;
    }

    // General case: horizontal pass over only the rows the vertical windows
    // need, then the vertical pass.
    let vc = AxisCoeffs::new(src_h, dst_h);
    let (row_first, row_end) = vc.input_span();
    let mut tmp = vec![0u8; dst_w * (row_end - row_first) * channels];
    horizontal_pass_dyn(channels, src, src_w, row_first, &hc, dst_w, &mut tmp);
    let mut out = vec![0u8; dst_w * dst_h * channels];
    vertical_pass(&tmp, dst_w * channels, row_first, &vc, &mut out);
    out
}

/// Output `(width, height)` of torchvision's `Resize(size)` with an int size
/// (`_compute_resized_output_size`, `max_size=None`): the short side becomes
/// `size`, the long side `int(size * long / short)` (f64 division, truncated).
/// For a square image both sides become `size`.
pub fn clip_resize_dims(w: usize, h: usize, size: usize) -> (usize, usize) {
    assert!(w > 0 && h > 0, "clip_resize_dims: empty image");
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: `size * long` is an exact int, `/ short` a correctly rounded
    // f64 division, `int()` truncates.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's centre-crop offset along one axis: the number of source
/// pixels skipped (>= 0), or, when the crop is larger than the image, minus
/// the zero padding added before the image.
fn center_crop_offset(size: usize, crop: usize) -> isize {
    if crop > size {
        // torchvision pads (crop - size) // 2 before, the rest after, then
        // crops at offset 0.
        -(((crop - size) / 2) as isize)
    } else {
        // int(round((size - crop) / 2.0)) with Python's round-half-to-even.
        let d = size - crop;
        let half = d / 2;
        let off = if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        };
        off as isize
    }
}

/// torchvision `CenterCrop((crop_h, crop_w))` on an interleaved u8 image:
/// top = `int(round((h - crop_h) / 2.0))`, left likewise (Python's
/// round-half-to-even), and zero padding (torchvision's `pad` with
/// `fill=0`, `(crop - size) // 2` before) on any axis where the crop exceeds the
/// image.
pub fn center_crop(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    crop_w: usize,
    crop_h: usize,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        w * h * channels,
        "center_crop: buffer size mismatch"
    );
    let off_x = center_crop_offset(w, crop_w);
    let off_y = center_crop_offset(h, crop_h);
    let mut out = vec![0u8; crop_w * crop_h * channels];
    // Columns of the output that map inside the source.
    let x0 = (-off_x).max(0) as usize;
    let x1 = ((w as isize - off_x).min(crop_w as isize)).max(x0 as isize) as usize;
    for (y, out_row) in out.chunks_exact_mut(crop_w * channels).enumerate() {
        let sy = y as isize + off_y;
        if sy < 0 || sy >= h as isize || x1 == x0 {
            continue;
        }
        let sx0 = (x0 as isize + off_x) as usize;
        let src_row = &src[sy as usize * w * channels..(sy as usize + 1) * w * channels];
        out_row[x0 * channels..x1 * channels]
            .copy_from_slice(&src_row[sx0 * channels..(sx0 + x1 - x0) * channels]);
    }
    out
}

/// CLIP's image transform for a `w`×`h` interleaved RGB u8 image: torchvision
/// `Resize(size, BICUBIC)` (Pillow resampler) → `CenterCrop(size)` →
/// `ToTensor()` → `Normalize(CLIP_MEAN, CLIP_STD)`.
///
/// Returns a CHW f32 tensor of length `3 * size * size`. Each value is
/// `(p as f32 / 255.0 - mean) / std` in f32, the same operations torch performs,
/// so results agree bit for bit with the Python pipeline.
pub fn clip_preprocess(rgb: &[u8], w: usize, h: usize, size: usize) -> Vec<f32> {
    assert_eq!(
        rgb.len(),
        w * h * 3,
        "clip_preprocess: expected interleaved RGB"
    );
    let (rw, rh) = clip_resize_dims(w, h, size);
    let resized: Cow<[u8]> = if (rw, rh) == (w, h) {
        Cow::Borrowed(rgb)
    } else {
        Cow::Owned(resize_bicubic_pillow(rgb, w, h, 3, rw, rh))
    };
    let crop = center_crop(&resized, rw, rh, 3, size, size);

    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in crop.chunks_exact(3).enumerate() {
        r[i] = (f32::from(px[0]) / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        g[i] = (f32::from(px[1]) / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1];
        b[i] = (f32::from(px[2]) / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resize/");

    // ---- procedural sources; mirror `gen_source` in scripts/gen_resize_fixture.py ----

    fn splitmix64(z: u64) -> u64 {
        let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fnv1a64(data: &[u8]) -> String {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        format!("{h:016x}")
    }

    fn gen_source(pattern: &str, seed: u64, w: usize, h: usize, ch: usize) -> Vec<u8> {
        let dx = (w.max(1) - 1).max(1);
        let dy = (h.max(1) - 1).max(1);
        let dr = ((w - 1) * (w - 1) + (h - 1) * (h - 1)).max(1);
        let mut out = Vec::with_capacity(w * h * ch);
        for y in 0..h {
            for x in 0..w {
                for c in 0..ch {
                    let idx = ((y * w + x) * ch + c) as u64;
                    let noise = (splitmix64((seed << 32) ^ idx) >> 56) as u8;
                    let grad = match c % 3 {
                        0 => x * 255 / dx,
                        1 => y * 255 / dy,
                        _ => (x * x + y * y) * 255 / dr,
                    } as u8;
                    let v = match pattern {
                        "noise" => noise,
                        "gradient" => grad,
                        "mixed" => {
                            if y % 16 == 11 || x % 16 == 5 {
                                255
                            } else if x % 16 == 6 {
                                0
                            } else if (x / 8 + y / 8) % 3 == 0 {
                                noise
                            } else {
                                grad
                            }
                        }
                        other => panic!("unknown pattern {other}"),
                    };
                    out.push(v);
                }
            }
        }
        out
    }

    struct Case {
        name: String,
        kind: String,
        src: Vec<u8>,
        src_w: usize,
        src_h: usize,
        channels: usize,
        dst_w: usize,
        dst_h: usize,
        size: usize,
        expected: Vec<u8>,
    }

    fn load_cases() -> Vec<Case> {
        let manifest = std::fs::read_to_string(format!("{FIXTURES}cases.json"))
            .expect("read tests/fixtures/resize/cases.json");
        let cases: Value = serde_json::from_str(&manifest).expect("parse cases.json");
        let uint = |c: &Value, k: &str| -> usize {
            c[k].as_u64()
                .unwrap_or_else(|| panic!("cases.json: missing {k}")) as usize
        };
        cases
            .as_array()
            .expect("cases.json: top level must be a list")
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap().to_string();
                let (src_w, src_h, channels) =
                    (uint(c, "src_w"), uint(c, "src_h"), uint(c, "channels"));
                let src = gen_source(
                    c["src"]["pattern"].as_str().unwrap(),
                    c["src"]["seed"].as_u64().unwrap(),
                    src_w,
                    src_h,
                    channels,
                );
                assert_eq!(
                    fnv1a64(&src),
                    c["src_fnv1a64"].as_str().unwrap(),
                    "{name}: generated source differs from the Python generator"
                );
                let dst = c["dst"].as_str().unwrap();
                let expected = std::fs::read(format!("{FIXTURES}{dst}"))
                    .unwrap_or_else(|e| panic!("read fixture {dst}: {e}"));
                Case {
                    kind: c["kind"].as_str().unwrap().to_string(),
                    size: c["size"].as_u64().unwrap_or(0) as usize,
                    dst_w: uint(c, "dst_w"),
                    dst_h: uint(c, "dst_h"),
                    name,
                    src,
                    src_w,
                    src_h,
                    channels,
                    expected,
                }
            })
            .collect()
    }

    #[test]
    fn resize_matches_pillow_byte_for_byte() {
        let cases: Vec<Case> = load_cases()
            .into_iter()
            .filter(|c| c.kind == "resize")
            .collect();
        assert!(
            cases.len() >= 7,
            "expected the resize fixtures, found {}",
            cases.len()
        );
        let mut failures = Vec::new();
        for c in &cases {
            let got = resize_bicubic_pillow(&c.src, c.src_w, c.src_h, c.channels, c.dst_w, c.dst_h);
            assert_eq!(got.len(), c.expected.len(), "{}: output size", c.name);
            let diffs: Vec<u8> = got
                .iter()
                .zip(&c.expected)
                .map(|(&a, &b)| a.abs_diff(b))
                .collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            if max != 0 {
                let n = diffs.iter().filter(|&&d| d != 0).count();
                let first = diffs.iter().position(|&d| d != 0).unwrap();
                failures.push(format!(
                    "{}: {n}/{} bytes differ, max abs diff {max}, first at byte {first} (got {}, pillow {})",
                    c.name,
                    got.len(),
                    got[first],
                    c.expected[first]
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "Pillow mismatches:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn clip_preprocess_matches_reference() {
        let cases: Vec<Case> = load_cases()
            .into_iter()
            .filter(|c| c.kind == "clip_preprocess")
            .collect();
        assert!(!cases.is_empty(), "no clip_preprocess fixture");
        for c in &cases {
            assert_eq!(c.channels, 3);
            let got = clip_preprocess(&c.src, c.src_w, c.src_h, c.size);
            let expected: Vec<f32> = c
                .expected
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(got.len(), 3 * c.size * c.size);
            assert_eq!(got.len(), expected.len(), "{}: output size", c.name);
            let max = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let bit_diff = got
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            eprintln!(
                "{}: max abs diff {max:e}, {bit_diff} values not bit-identical",
                c.name
            );
            assert!(max <= 1e-6, "{}: max abs diff {max:e} > 1e-6", c.name);
        }
    }

    #[test]
    fn resize_dims_follow_torchvision() {
        assert_eq!(clip_resize_dims(32, 32, 224), (224, 224));
        assert_eq!(clip_resize_dims(450, 230, 224), (438, 224));
        assert_eq!(clip_resize_dims(230, 450, 224), (224, 438));
        assert_eq!(clip_resize_dims(500, 375, 224), (298, 224));
        assert_eq!(clip_resize_dims(37, 53, 224), (224, 320));
        assert_eq!(clip_resize_dims(640, 480, 336), (448, 336));
    }

    #[test]
    fn center_crop_rounds_half_to_even_and_pads() {
        // (239 - 224) / 2 = 7.5 -> 8 ; (241 - 224) / 2 = 8.5 -> 8 ; 7 -> 3.5 -> 4
        assert_eq!(center_crop_offset(239, 224), 8);
        assert_eq!(center_crop_offset(241, 224), 8);
        assert_eq!(center_crop_offset(231, 224), 4);
        assert_eq!(center_crop_offset(224, 224), 0);
        assert_eq!(center_crop_offset(3, 6), -1);

        // 3x2 single-channel image, crop 2x2: left = round(0.5) = 0.
        let img = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(center_crop(&img, 3, 2, 1, 2, 2), vec![1, 2, 4, 5]);
        // 5 wide, crop 2: left = round(1.5) = 2.
        let img = [1u8, 2, 3, 4, 5];
        assert_eq!(center_crop(&img, 5, 1, 1, 2, 1), vec![3, 4]);
        // Crop larger than the image: zero padding, (crop - size) // 2 before.
        let img = [7u8, 8];
        assert_eq!(
            center_crop(&img, 2, 1, 1, 5, 2),
            vec![0, 7, 8, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn same_size_resize_is_identity() {
        let img: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 37 % 251) as u8).collect();
        assert_eq!(resize_bicubic_pillow(&img, 5, 4, 3, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        for &(sw, sh, dw, dh) in &[(32, 32, 224, 224), (500, 375, 298, 224), (7, 300, 9, 2)] {
            let img = vec![173u8; sw * sh * 3];
            let out = resize_bicubic_pillow(&img, sw, sh, 3, dw, dh);
            assert!(out.iter().all(|&v| v == 173), "{sw}x{sh}->{dw}x{dh}");
        }
    }

    /// `cargo test --release -- --ignored --nocapture bench_cifar_upsample`
    #[test]
    #[ignore]
    fn bench_cifar_upsample() {
        let img = gen_source("noise", 1, 32, 32, 3);
        let n = 1000;
        let t = std::time::Instant::now();
        let mut sink = 0u64;
        for _ in 0..n {
            let out = resize_bicubic_pillow(&img, 32, 32, 3, 224, 224);
            sink = sink.wrapping_add(u64::from(out[out.len() / 2]));
        }
        let resize = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..n {
            let out = clip_preprocess(&img, 32, 32, 224);
            sink = sink.wrapping_add(out[100].to_bits() as u64);
        }
        let full = t.elapsed();
        println!(
            "{n} x resize 32x32->224x224: {resize:?} ({:?}/img); {n} x clip_preprocess: {full:?} (sink {sink})",
            resize / n
        );
    }
}
