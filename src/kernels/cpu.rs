//! CPU f32 primitives on plain slices: a fused linear layer (bias and residual folded into the
//! GEMM's destination), row-parallel layer norm, attention without materialised head copies,
//! and vectorised activations (exp / erf / tanh written branch-free so that LLVM vectorises them
//! in the AVX-512 / AVX2 clones selected at run time).
//!
//! Every kernel writes each output element from exactly one thread in a fixed order, so results
//! are bit-identical run to run for a given thread count and CPU. The element-wise kernels use
//! no fused multiply-add, so they give the same bits in every SIMD clone.

use rayon::prelude::*;

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads used by the kernels (and by the GEMM): candle's `RAYON_NUM_THREADS`-aware count, or
/// 1 inside [`serial`].
pub fn threads() -> usize {
    super::tune_allocator();
    if SERIAL.with(|s| s.get()) {
        return 1;
    }
    candle_core::utils::get_num_threads().max(1)
}

/// Runs `f` with every kernel of this module single-threaded on the calling thread, for work
/// that the caller already spreads over threads (independent batches, one per thread: no
/// fork/join per GEMM, layer norm or softmax). Every kernel computes each output element the
/// same way whatever its thread count (the GEMM splits rows and columns, never the sum over
/// k), so results are bit-identical inside and outside `serial`; `serial_matches_parallel`
/// checks it.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Runs `f(i)` for `i` in `0..n`: on the kernel threads, or in order on this thread when the
/// kernels are single-threaded (see [`serial`]).
fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if threads() == 1 {
        (0..n).for_each(f);
    } else {
        (0..n).into_par_iter().for_each(f);
    }
}

/// Maps `items` in parallel, each inside [`serial`], when there is more than one item and more
/// than one kernel thread; otherwise in order on this thread. The results are the same either
/// way, bit for bit (see [`serial`]); what changes is that each thread runs whole items instead
/// of every thread splitting each operation of one item.
pub fn map_items<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    if items.len() > 1 && threads() > 1 {
        items.par_iter().map(|x| serial(|| f(x))).collect()
    } else {
        items.iter().map(f).collect()
    }
}

fn gemm_par(work: usize) -> gemm::Parallelism {
    // below ~2 MFLOP the fork/join costs more than the second thread saves
    let t = threads();
    if t > 1 && work > (1 << 20) {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// Calls `f` with the best available SIMD clone of an `#[inline(always)]` body.
macro_rules! simd_dispatch {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                {
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// scalar building blocks (branch-free, vectorisable)

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x with Cephes' expf polynomial (≤ 2 ulp on [-87, 88]); saturates outside.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.376_26);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * (r * r) + r + 1.0;
    // 2^n through the float's bits (n is an integer in [-126, 128]): adding 1.5·2^23 puts n
    // in the low mantissa bits; no saturating float→int conversion, so this vectorises
    let nb = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    y * f32::from_bits(nb.wrapping_add(127) << 23)
}

/// erf(x), Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), as PyTorch's vectorised erf.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    p = p * t - 1.453_152;
    p = p * t + 1.421_413_7;
    p = p * t - 0.284_496_72;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

/// tanh(x) = 1 − 2 / (e^{2x} + 1).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let e = exp(2.0 * x.clamp(-15.0, 15.0));
    1.0 - 2.0 / (e + 1.0)
}

/// Activation applied after a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// x·σ(1.702x) (CLIP)
    QuickGelu,
    /// exact GELU, 0.5x(1 + erf(x/√2)) (BERT `gelu`)
    GeluErf,
    /// tanh GELU (BERT `gelu_approximate`, GPT-2 `gelu_new`)
    GeluTanh,
    Relu,
}

simd_dispatch! {
    fn act_slice(x: &mut [f32], act: Act) {
        match act {
            Act::QuickGelu => x.iter_mut().for_each(|v| *v = *v / (1.0 + exp(-1.702 * *v))),
            Act::GeluErf => x
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
            Act::GeluTanh => x.iter_mut().for_each(|v| {
                let u = 0.797_884_6 * (*v + 0.044_715 * *v * *v * *v);
                *v = 0.5 * *v * (1.0 + tanh(u))
            }),
            Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

/// Chunk length (a multiple of `row`) that splits `len` over the kernel threads.
fn chunk_len(len: usize, row: usize) -> usize {
    let rows = len.div_ceil(row.max(1));
    let per = rows.div_ceil(threads()).max(1);
    (per * row).max(1)
}

/// In-place activation, parallel over rows of width `row`.
pub fn activate(x: &mut [f32], row: usize, act: Act) {
    let c = chunk_len(x.len(), row);
    x.par_chunks_mut(c).for_each(|s| act_slice(s, act));
}

// ---------------------------------------------------------------------------------------------
// linear

/// `out[n, ld_out][.., :dout] = residual + bias + x·Wᵀ` with `x` `[n, din]` (row stride `ld_x`),
/// `w` `[dout, din]` row-major (PyTorch layout), `bias` `[dout]`, `residual` `[n, dout]`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    ld_x: usize,
    n: usize,
    din: usize,
    w: &[f32],
    dout: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    ld_out: usize,
) {
    assert!(w.len() >= dout * din && x.len() >= (n.max(1) - 1) * ld_x + din);
    assert!(out.len() >= (n.max(1) - 1) * ld_out + dout);
    if n == 0 || dout == 0 {
        return;
    }
    let out = &mut out[..(n - 1) * ld_out + dout];
    let read_dst = bias.is_some() || residual.is_some();
    if read_dst {
        let rows = chunk_len(n, 1);
        out.par_chunks_mut(rows * ld_out)
            .enumerate()
            .for_each(|(ci, o)| {
                for (ri, orow) in o.chunks_mut(ld_out).enumerate() {
                    let r = ci * rows + ri;
                    let orow = &mut orow[..dout];
                    match (residual, bias) {
                        (Some(res), Some(b)) => {
                            let rrow = &res[r * dout..(r + 1) * dout];
                            for ((o, a), c) in orow.iter_mut().zip(rrow).zip(b) {
                                *o = a + c;
                            }
                        }
                        (Some(res), None) => orow.copy_from_slice(&res[r * dout..(r + 1) * dout]),
                        (None, Some(b)) => orow.copy_from_slice(&b[..dout]),
                        (None, None) => unreachable!(),
                    }
                }
            });
    }
    // SAFETY: the bounds were checked above; strides describe row-major x, Wᵀ and out.
    unsafe {
        gemm::gemm(
            n,
            dout,
            din,
            out.as_mut_ptr(),
            1,
            ld_out as isize,
            read_dst,
            x.as_ptr(),
            1,
            ld_x as isize,
            w.as_ptr(),
            din as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_par(n * dout * din),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// layer norm

#[inline(always)]
fn ln_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    // 16 partial sums in fixed order (vectorised), then their sum
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    let mean = (acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / d;
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += (c[l] - mean) * (c[l] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>()
        + chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>())
        / d;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_dispatch! {
    fn ln_rows(x: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
        for row in x.chunks_mut(d) {
            let (mean, inv) = ln_stats(row, eps);
            for ((v, g), c) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * g + c;
            }
        }
    }
}

simd_dispatch! {
    fn ln_rows_into(x: &[f32], out: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
        for (row, o) in x.chunks(d).zip(out.chunks_mut(d)) {
            let (mean, inv) = ln_stats(row, eps);
            for (((o, v), g), c) in o.iter_mut().zip(row).zip(w).zip(b) {
                *o = (*v - mean) * inv * g + c;
            }
        }
    }
}

/// In-place layer norm over rows of width `d`, parallel over rows.
pub fn layer_norm(x: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    let c = chunk_len(x.len(), d);
    x.par_chunks_mut(c).for_each(|s| ln_rows(s, d, w, b, eps));
}

/// `out = LN(x)` row by row (x unchanged).
pub fn layer_norm_into(x: &[f32], out: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    let c = chunk_len(x.len(), d);
    out.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(o, i)| ln_rows_into(i, o, d, w, b, eps));
}

// ---------------------------------------------------------------------------------------------
// attention

/// Which keys a query may see.
#[derive(Clone, Copy, Debug)]
pub enum KeyMask<'a> {
    All,
    /// key j ≤ query position (CLIP text)
    Causal,
    /// per batch row: `[B·T]`, true for real (visible) keys (BERT padding)
    Valid(&'a [bool]),
}

// Softmax of one row over its visible keys (hidden ones get 0), branch-free so that it
// vectorises: the maximum and the sum run in 16 lanes, then the lanes are combined.
simd_dispatch! {
    fn softmax_row(s: &mut [f32], vis: &[bool]) {
        const L: usize = 16;
        let n = s.len().min(vis.len());
        let (s, vis) = (&mut s[..n], &vis[..n]);
        let full = n / L * L;
        let mut mx = [f32::NEG_INFINITY; L];
        for (c, v) in s[..full].chunks_exact(L).zip(vis[..full].chunks_exact(L)) {
            for l in 0..L {
                let x = if v[l] { c[l] } else { f32::NEG_INFINITY };
                mx[l] = if x > mx[l] { x } else { mx[l] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for (x, &ok) in s[full..].iter().zip(&vis[full..]) {
            if ok && *x > m {
                m = *x;
            }
        }
        for x in mx {
            if x > m {
                m = x;
            }
        }
        let mut acc = [0f32; L];
        for (c, v) in s[..full].chunks_exact_mut(L).zip(vis[..full].chunks_exact(L)) {
            for l in 0..L {
                let e = exp(c[l] - m);
                let e = if v[l] { e } else { 0.0 };
                c[l] = e;
                acc[l] += e;
            }
        }
        let mut sum = 0f32;
        for (x, &ok) in s[full..].iter_mut().zip(&vis[full..]) {
            let e = if ok { exp(*x - m) } else { 0.0 };
            *x = e;
            sum += e;
        }
        let sum = acc.iter().sum::<f32>() + sum;
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Scaled dot-product attention read straight out of a fused `qkv` buffer `[B·T, 3·D]`
/// (q | k | v, heads contiguous within each), written to `out` `[B·Tq, D]`.
/// `queries`: `None` for every position, or one query position per batch row (`Tq = 1`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    scale: f32,
    mask: KeyMask,
    queries: Option<&[usize]>,
    out: &mut [f32],
) {
    let d = heads * hd;
    let ld = 3 * d;
    assert!(qkv.len() >= b * t * ld);
    let tq = if queries.is_some() { 1 } else { t };
    assert!(out.len() >= b * tq * d);
    struct Out(*mut f32);
    unsafe impl Sync for Out {}
    let outp = Out(out.as_mut_ptr());
    let outp = &outp;
    for_each_index(b * heads, |bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bi * t * ld;
        let q0 = base + h * hd;
        let k0 = base + d + h * hd;
        let v0 = base + 2 * d + h * hd;
        let qpos: Vec<usize> = match queries {
            Some(q) => vec![q[bi]],
            None => (0..t).collect(),
        };
        let mut s = vec![0f32; tq * t];
        // S = scale · Q Kᵀ  [tq, t], read in place (Kᵀ through strides)
        for (r, &p) in qpos.iter().enumerate() {
            let (rows, start) = match queries {
                Some(_) => (1, p),
                None if r == 0 => (t, 0),
                None => break,
            };
            // SAFETY: q rows [start, start+rows) and all t key rows lie inside qkv; s has
            // rows·t cells.
            unsafe {
                gemm::gemm(
                    rows,
                    t,
                    hd,
                    s.as_mut_ptr(),
                    1,
                    t as isize,
                    false,
                    qkv.as_ptr().add(q0 + start * ld),
                    1,
                    ld as isize,
                    qkv.as_ptr().add(k0),
                    ld as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        let mut vis = vec![true; t];
        for (r, &p) in qpos.iter().enumerate() {
            match mask {
                KeyMask::All => {}
                KeyMask::Causal => vis.iter_mut().enumerate().for_each(|(j, v)| *v = j <= p),
                KeyMask::Valid(m) => vis.copy_from_slice(&m[bi * t..(bi + 1) * t]),
            }
            softmax_row(&mut s[r * t..(r + 1) * t], &vis);
        }
        // O = P V → out[(bi·tq + r), h·hd ..]
        // SAFETY: each (bi, h) task writes a disjoint set of (row, column-block) cells.
        unsafe {
            let o = outp.0.add(bi * tq * d + h * hd);
            gemm::gemm(
                tq,
                hd,
                t,
                o,
                1,
                d as isize,
                false,
                s.as_ptr(),
                1,
                t as isize,
                qkv.as_ptr().add(v0),
                1,
                ld as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_math_is_accurate() {
        let mut worst = (0f32, 0f32, 0f32);
        for i in -4000..=4000 {
            let x = i as f32 * 0.01;
            let e = (exp(x) - x.exp()).abs() / x.exp();
            worst.0 = worst.0.max(e);
            worst.1 = worst.1.max((tanh(x) - x.tanh()).abs());
            // erf against a high-precision series via f64
            worst.2 = worst.2.max((erf(x) as f64 - erf64(x as f64)).abs() as f32);
        }
        assert!(worst.0 < 5e-7, "exp rel err {}", worst.0);
        assert!(worst.1 < 5e-7, "tanh abs err {}", worst.1);
        assert!(worst.2 < 3e-7, "erf abs err {}", worst.2);
        assert_eq!(exp(-1000.0) < 1e-37, true);
    }

    fn erf64(x: f64) -> f64 {
        // Taylor series for |x| < 3, asymptotic 1 beyond (erfc(3) ~ 2e-5 handled by continued
        // fraction)
        if x.abs() > 3.0 {
            let a = x.abs();
            // Lentz continued fraction for erfc
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            let erfc = (-a * a).exp() / (f * std::f64::consts::PI.sqrt());
            return (1.0 - erfc).copysign(x);
        }
        let mut sum = 0f64;
        let mut term = x;
        let mut n = 0f64;
        while term.abs() > 1e-18 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// The kernels give the same bits single-threaded inside [`serial`] (what concurrent batches
    /// use) as split over the kernel threads: linear layers big enough for a threaded GEMM,
    /// attention with padding, layer norm and every activation.
    #[test]
    fn serial_matches_parallel() {
        if threads() < 2 {
            eprintln!("serial_matches_parallel: one kernel thread here, nothing to compare");
            return;
        }
        let (b, t, heads, hd) = (20, 30, 12, 32);
        let (d, n) = (heads * hd, b * t);
        let val = |i: usize, f: f32| ((i as f32 * f).sin() * 0.5) as f32;
        let x: Vec<f32> = (0..n * d).map(|i| val(i, 0.37)).collect();
        let w: Vec<f32> = (0..3 * d * d).map(|i| val(i, 0.011) * 0.1).collect();
        let bias: Vec<f32> = (0..3 * d).map(|i| val(i, 0.7)).collect();
        let valid: Vec<bool> = (0..n).map(|i| i % t < t - (i / t) % 7).collect();
        let g: Vec<f32> = (0..d).map(|i| 1.0 + val(i, 0.3)).collect();
        let run = || {
            let mut qkv = vec![0f32; n * 3 * d];
            linear(&x, d, n, d, &w, 3 * d, Some(&bias), None, &mut qkv, 3 * d);
            let mut att = vec![0f32; n * d];
            attention(
                &qkv,
                b,
                t,
                heads,
                hd,
                0.17,
                KeyMask::Valid(&valid),
                None,
                &mut att,
            );
            let mut out = vec![0f32; n * d];
            linear(
                &att,
                d,
                n,
                d,
                &w[..d * d],
                d,
                Some(&bias[..d]),
                Some(&x),
                &mut out,
                d,
            );
            layer_norm(&mut out, d, &g, &bias[..d], 1e-12);
            let mut acts = Vec::new();
            for act in [Act::QuickGelu, Act::GeluErf, Act::GeluTanh, Act::Relu] {
                let mut a = qkv.clone();
                activate(&mut a, 3 * d, act);
                acts.push(a);
            }
            (qkv, att, out, acts)
        };
        let par = run();
        let ser = serial(run);
        assert_eq!(threads(), candle_core::utils::get_num_threads().max(1));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&par.0) == bits(&ser.0), "qkv GEMM differs");
        assert!(bits(&par.1) == bits(&ser.1), "attention differs");
        assert!(
            bits(&par.2) == bits(&ser.2),
            "projection + layer norm differs"
        );
        for (a, s) in par.3.iter().zip(&ser.3) {
            assert!(bits(a) == bits(s), "activation differs");
        }
        // map_items: the same results as a plain loop, in order
        let items: Vec<usize> = (0..5).collect();
        let got = map_items(&items, |&i| (i, threads()));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), items);
        assert!(
            got.iter().all(|g| g.1 == 1),
            "items run single-threaded: {got:?}"
        );
    }

    #[test]
    fn linear_folds_bias_and_residual() {
        let (n, din, dout) = (5, 7, 3);
        let x: Vec<f32> = (0..n * din).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..dout * din).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..dout).map(|i| i as f32).collect();
        let r: Vec<f32> = (0..n * dout).map(|i| -(i as f32)).collect();
        let mut out = vec![0f32; n * dout];
        linear(
            &x,
            din,
            n,
            din,
            &w,
            dout,
            Some(&b),
            Some(&r),
            &mut out,
            dout,
        );
        for i in 0..n {
            for j in 0..dout {
                let want: f32 = (0..din)
                    .map(|k| x[i * din + k] * w[j * din + k])
                    .sum::<f32>()
                    + b[j]
                    + r[i * dout + j];
                assert!((out[i * dout + j] - want).abs() < 1e-5);
            }
        }
    }
}
