//! Linear layers with a handful of rows: the decoding step of a causal LM, where the rows are the
//! sequences of a batch (the equivariant branches of `gpt2-fairness`, or `bench-lm
//! --batch-size`). Such a step is bound by reading the weights, not by arithmetic, so the weight
//! is packed once at load time into a layout that one pass streams sequentially while applying
//! it to every row:
//!
//! * column panels of [`PANEL`] = 16 output columns, each stored k-major and contiguous
//!   (`[n / 16][k][16]`, the last panel zero-padded), 64-byte aligned, so one panel is one
//!   sequential stream of whole cache lines;
//! * the kernel keeps `rows × panels` vector accumulators in registers (up to 4 panels at once
//!   with AVX-512, one panel as two 8-lane halves with AVX2), and for each `k` loads each panel
//!   vector once and multiplies it with the broadcast `x[r, k]` of every row;
//! * the output columns are split once per call into one contiguous range of panels per worker
//!   thread, so two threads stream disjoint halves of the weight with no barrier in between.
//!
//! The general GEMM (the `gemm` crate behind candle's matmul) repacks the right-hand side on
//! every call and splits a product with a few rows poorly over the threads; here a decoding step
//! with 8 rows costs little more than one with 1.
//!
//! Determinism: every output element is `bias + Σ_k x[r, k]·w[k, c]` accumulated with fused
//! multiply-adds in increasing `k`, whatever the number of rows, the row blocking, the thread
//! count or the SIMD path: a row's result does not depend on the rows it is batched with.

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// Output columns per panel (one AVX-512 vector of f32).
pub const PANEL: usize = 16;

/// Products with at most this many rows take the packed path in the models. Measured on GPT-2
/// 124M's four layer shapes (AVX-512, 2 threads), packed vs the general GEMM per layer: 8 rows
/// 1.1 vs 2.7 ms, 128 rows 7.8–9.3 vs 11.5 ms, 256 rows 10.9–24 vs 19–27 ms, 512 rows level,
/// 1,024 rows 102 vs 89 ms (the general GEMM's cache blocking wins on long prompts).
pub const MAX_ROWS: usize = 256;

/// Software prefetch distance in lanes (64-byte lines) ahead in each panel stream. Measured on
/// GPT-2 124M (AVX-512, 2 threads): none → 25.2 ms per step of the linear layers at 8 rows,
/// 16 or 32 lanes → 21.0–21.6 ms; the hardware prefetcher alone falls behind when the
/// multiply-adds of many rows sit between the loads.
const PREFETCH: usize = 32;

/// Below this many multiply-adds (rows × k × n) a product runs on one thread.
const PAR_WORK: usize = 1 << 18;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Lane([f32; PANEL]);

/// A weight `W` (`y = x·W + b`, `W` `[k, n]`) packed into k-major column panels.
#[derive(Clone)]
pub struct PackedLinear {
    k: usize,
    n: usize,
    /// `[panels][k]` lanes of 16 columns.
    lanes: Vec<Lane>,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedLinear[k {}, n {}]", self.k, self.n)
    }
}

impl PackedLinear {
    /// Packs `w` stored `[k, n]` row-major (GPT-2's Conv1D).
    pub fn from_kn(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> PackedLinear {
        assert_eq!(w.len(), k * n, "PackedLinear::from_kn: weight shape");
        Self::pack(k, n, bias, |kk, c| w[kk * n + c])
    }

    /// Packs `w` stored `[n, k]` row-major (a PyTorch Linear weight, a tied output embedding):
    /// `y = x·wᵀ + b`.
    pub fn from_nk(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> PackedLinear {
        assert_eq!(w.len(), k * n, "PackedLinear::from_nk: weight shape");
        Self::pack(k, n, bias, |kk, c| w[c * k + kk])
    }

    fn pack(
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        get: impl Fn(usize, usize) -> f32 + Sync,
    ) -> PackedLinear {
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "PackedLinear: bias length");
        }
        let np = n.div_ceil(PANEL);
        let mut lanes = vec![Lane([0.0; PANEL]); np * k];
        if k > 0 {
            lanes.par_chunks_mut(k).enumerate().for_each(|(p, panel)| {
                let c0 = p * PANEL;
                let w = PANEL.min(n - c0);
                for (kk, lane) in panel.iter_mut().enumerate() {
                    for j in 0..w {
                        lane.0[j] = get(kk, c0 + j);
                    }
                }
            });
        }
        PackedLinear {
            k,
            n,
            lanes,
            bias: bias.map(|b| b.to_vec()),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        self.lanes.len() * std::mem::size_of::<Lane>()
            + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// `out [m, n] = x [m, k] · W + b` (`x` and `out` row-major, contiguous).
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.forward_isa(x, m, out, false, isa())
    }

    /// [`Self::forward`] followed by the tanh GELU (GPT-2's `gelu_new`), applied as the results
    /// are stored.
    pub fn forward_gelu(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.forward_isa(x, m, out, true, isa())
    }

    fn forward_isa(&self, x: &[f32], m: usize, out: &mut [f32], gelu: bool, isa: Isa) {
        let (k, n) = (self.k, self.n);
        assert!(
            x.len() >= m * k && out.len() >= m * n,
            "PackedLinear::forward: shapes"
        );
        if m == 0 || n == 0 {
            return;
        }
        let np = n.div_ceil(PANEL);
        let t = super::cpu::threads().min(np);
        let job = Job {
            x: x.as_ptr(),
            m,
            k,
            n,
            w: self.lanes.as_ptr() as *const f32,
            bias: self
                .bias
                .as_deref()
                .map_or(std::ptr::null(), |b| b.as_ptr()),
            out: out.as_mut_ptr(),
            gelu,
        };
        if t <= 1 || m * k * n < PAR_WORK {
            // SAFETY: bounds checked above; one caller writes every panel.
            unsafe { run_panels(isa, &job, 0, np) };
            return;
        }
        // one contiguous range of panels per thread (multiples of 4 panels, so that every
        // thread runs the widest blocks)
        let groups = np.div_ceil(4);
        let per = groups.div_ceil(t);
        (0..t).into_par_iter().for_each(|ti| {
            let p0 = (ti * per * 4).min(np);
            let p1 = ((ti + 1) * per * 4).min(np);
            if p0 < p1 {
                // SAFETY: the threads' panel ranges are disjoint, so are the columns they write.
                unsafe { run_panels(isa, &job, p0, p1) };
            }
        });
    }
}

impl PackedLinear {
    /// Packs a candle weight (f32 on the CPU): `kn` true for `[k, n]` (Conv1D), false for
    /// `[n, k]` (Linear, tied embedding). `None` for other dtypes or devices.
    pub fn from_tensor(
        w: &Tensor,
        kn: bool,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Option<PackedLinear>> {
        if w.dtype() != DType::F32 || !w.device().is_cpu() {
            return Ok(None);
        }
        let (a, b) = w.dims2()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let bv = match bias {
            Some(t) => Some(t.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Some(if kn {
            PackedLinear::from_kn(&wv, a, b, bv.as_deref())
        } else {
            PackedLinear::from_nk(&wv, a, b, bv.as_deref())
        }))
    }

    /// `x [m, k] · W + b` (then the tanh GELU if `gelu`) for an f32 CPU tensor; `None` (use the
    /// general GEMM) when `x` has more than [`MAX_ROWS`] rows or is not f32 on the CPU.
    pub fn forward_tensor(&self, x: &Tensor, gelu: bool) -> candle_core::Result<Option<Tensor>> {
        let (m, k) = x.dims2()?;
        if m > MAX_ROWS || x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        if k != self.k {
            candle_core::bail!("packed linear: input has {k} columns, weight {}", self.k);
        }
        let x = x.contiguous()?;
        let mut out = vec![0f32; m * self.n];
        {
            let (s, l) = x.storage_and_layout();
            let Storage::Cpu(c) = &*s else {
                return Ok(None);
            };
            let data = c.as_slice::<f32>()?;
            let o = l.start_offset();
            self.forward_isa(&data[o..o + m * k], m, &mut out, gelu, isa());
        }
        Ok(Some(Tensor::from_vec(out, (m, self.n), x.device())?))
    }
}

/// One product's operands as raw pointers (shared by the worker threads, each writing its own
/// output columns).
struct Job {
    x: *const f32,
    m: usize,
    k: usize,
    n: usize,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    /// apply the tanh GELU on store
    gelu: bool,
}

// SAFETY: the pointers are only read, except `out`, where every thread writes its own panels'
// columns (disjoint ranges, see `PackedLinear::forward_isa`); the buffers outlive the call.
unsafe impl Sync for Job {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// Computes panels `p0..p1` of `job` for all its rows.
///
/// # Safety
/// `job` must describe valid buffers; no other thread may write these panels' columns.
unsafe fn run_panels(isa: Isa, job: &Job, p0: usize, p1: usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::panels_avx512(job, p0, p1),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::panels_avx2(job, p0, p1),
        Isa::Scalar => panels_scalar(job, p0, p1),
    }
}

/// Writes `acc` (one panel's 16 columns of one row, bias not yet added) at column `c0`.
#[inline(always)]
unsafe fn store_lane(job: &Job, r: usize, c0: usize, acc: &[f32; PANEL]) {
    let w = PANEL.min(job.n - c0);
    let o = job.out.add(r * job.n + c0);
    for j in 0..w {
        let b = if job.bias.is_null() {
            0.0
        } else {
            *job.bias.add(c0 + j)
        };
        let v = acc[j] + b;
        *o.add(j) = if job.gelu { gelu_tanh(v) } else { v };
    }
}

/// The tanh GELU, written as the fused encoder's (no fused multiply-add: the same bits in every
/// SIMD clone).
#[inline(always)]
fn gelu_tanh(v: f32) -> f32 {
    let u = 0.797_884_6 * (v + 0.044_715 * v * v * v);
    0.5 * v * (1.0 + super::cpu::tanh(u))
}

unsafe fn panels_scalar(job: &Job, p0: usize, p1: usize) {
    let k = job.k;
    for p in p0..p1 {
        let w = job.w.add(p * k * PANEL);
        for r in 0..job.m {
            let x = job.x.add(r * k);
            let mut acc = [0f32; PANEL];
            for kk in 0..k {
                let a = *x.add(kk);
                let lane = w.add(kk * PANEL);
                for (j, v) in acc.iter_mut().enumerate() {
                    *v = a.mul_add(*lane.add(j), *v);
                }
            }
            store_lane(job, r, p * PANEL, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_lane, Job, PANEL, PREFETCH};
    use std::arch::x86_64::*;

    /// Rows `r0..r0+MR` × panels `p..p+NP`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block512<const MR: usize, const NP: usize>(job: &Job, r0: usize, p: usize) {
        let k = job.k;
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        let x = job.x.add(r0 * k);
        let w = job.w.add(p * k * PANEL);
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); NP];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm512_load_ps(w.add((j * k + kk) * PANEL));
                // (a hint: an address past the panel is harmless)
                _mm_prefetch::<_MM_HINT_T0>(
                    w.wrapping_add((j * k + kk + PREFETCH) * PANEL) as *const i8
                );
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(r * k + kk));
                for j in 0..NP {
                    a[j] = _mm512_fmadd_ps(xb, wv[j], a[j]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                let c0 = (p + j) * PANEL;
                let mut lane = [0f32; PANEL];
                _mm512_storeu_ps(lane.as_mut_ptr(), *v);
                store_lane(job, r0 + r, c0, &lane);
            }
        }
    }

    /// Rows `r0..r0+MR` × one panel `p` as two 8-lane halves.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block256<const MR: usize>(job: &Job, r0: usize, p: usize) {
        let k = job.k;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let x = job.x.add(r0 * k);
        let w = job.w.add(p * k * PANEL);
        for kk in 0..k {
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((kk + PREFETCH) * PANEL) as *const i8);
            let lo = _mm256_load_ps(w.add(kk * PANEL));
            let hi = _mm256_load_ps(w.add(kk * PANEL + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_ps(*x.add(r * k + kk));
                a[0] = _mm256_fmadd_ps(xb, lo, a[0]);
                a[1] = _mm256_fmadd_ps(xb, hi, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let mut lane = [0f32; PANEL];
            _mm256_storeu_ps(lane.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(lane.as_mut_ptr().add(8), a[1]);
            store_lane(job, r0 + r, p * PANEL, &lane);
        }
    }

    macro_rules! rows_dispatch {
        ($f:ident, $mr:expr $(, $args:tt)*) => {
            match $mr {
                1 => $f::<1, $($args)*>,
                2 => $f::<2, $($args)*>,
                3 => $f::<3, $($args)*>,
                4 => $f::<4, $($args)*>,
                5 => $f::<5, $($args)*>,
                6 => $f::<6, $($args)*>,
                7 => $f::<7, $($args)*>,
                8 => $f::<8, $($args)*>,
                9 => $f::<9, $($args)*>,
                10 => $f::<10, $($args)*>,
                11 => $f::<11, $($args)*>,
                12 => $f::<12, $($args)*>,
                13 => $f::<13, $($args)*>,
                _ => $f::<14, $($args)*>,
            }
        };
    }

    /// AVX-512: panels in groups of 4 (up to 6 rows at a time: 24 accumulators), 2 (up to 14
    /// rows: 28) or 1 (the last odd panel); more rows in blocks re-reading the panels from cache.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn panels_avx512(job: &Job, p0: usize, p1: usize) {
        let m = job.m;
        let np_group = if m <= 6 { 4 } else { 2 };
        let mut p = p0;
        while p < p1 {
            let np = if p1 - p >= np_group {
                np_group
            } else if p1 - p >= 2 {
                2
            } else {
                1
            };
            // rows in equal blocks of at most 6 (4 panels) or 14 (fewer panels)
            let cap = if np == 4 { 6 } else { 14 };
            let per = m.div_ceil(m.div_ceil(cap));
            let mut r0 = 0;
            while r0 < m {
                let mr = (m - r0).min(per);
                let f: unsafe fn(&Job, usize, usize) = match np {
                    4 => rows_dispatch!(block512, mr, 4),
                    2 => rows_dispatch!(block512, mr, 2),
                    _ => rows_dispatch!(block512, mr, 1),
                };
                f(job, r0, p);
                r0 += mr;
            }
            p += np;
        }
    }

    /// AVX2: one panel (two 8-lane halves) at a time, up to 6 rows (12 accumulators).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panels_avx2(job: &Job, p0: usize, p1: usize) {
        let m = job.m;
        for p in p0..p1 {
            let per = m.div_ceil(m.div_ceil(6));
            let mut r0 = 0;
            while r0 < m {
                let mr = (m - r0).min(per);
                let f: unsafe fn(&Job, usize, usize) = rows_dispatch!(block256, mr);
                f(job, r0, p);
                r0 += mr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.618 + seed).sin() * 1.7).fract())
            .collect()
    }

    fn reference(x: &[f32], m: usize, k: usize, w_kn: &[f32], n: usize, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let s: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w_kn[i * n + c] as f64)
                    .sum();
                out[r * n + c] = (s + b[c] as f64) as f32;
            }
        }
        out
    }

    /// Every SIMD path this CPU can run.
    fn isas() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    #[test]
    fn packed_matches_reference_for_odd_shapes() {
        for &(k, n) in &[(1, 1), (7, 33), (33, 17), (64, 100), (129, 81)] {
            let w = data(k * n, 0.3);
            let b = data(n, 1.1);
            let kn = PackedLinear::from_kn(&w, k, n, Some(&b));
            // the same weight stored [n, k]
            let mut wt = vec![0f32; k * n];
            for i in 0..k {
                for c in 0..n {
                    wt[c * k + i] = w[i * n + c];
                }
            }
            let nk = PackedLinear::from_nk(&wt, n, k, Some(&b));
            for m in 1..=17 {
                let x = data(m * k, 2.0 + m as f32);
                let want = reference(&x, m, k, &w, n, &b);
                let mut first: Option<Vec<f32>> = None;
                for isa in isas() {
                    let mut o1 = vec![f32::NAN; m * n];
                    let mut o2 = vec![f32::NAN; m * n];
                    kn.forward_isa(&x, m, &mut o1, false, isa);
                    nk.forward_isa(&x, m, &mut o2, false, isa);
                    assert_eq!(o1, o2, "k {k} n {n} m {m} {isa:?}");
                    for (g, w) in o1.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "k {k} n {n} m {m} {isa:?}: {g} vs {w}"
                        );
                    }
                    // fused multiply-adds in the same order: the same bits on every path
                    match &first {
                        None => first = Some(o1),
                        Some(f) => assert_eq!(f, &o1, "k {k} n {n} m {m} {isa:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn packed_matches_candle_matmul() -> candle_core::Result<()> {
        use candle_core::Device;
        let dev = Device::Cpu;
        for &(k, n) in &[(5, 3), (31, 47), (77, 129), (768, 50)] {
            let w = Tensor::from_vec(data(k * n, 0.9), (k, n), &dev)?;
            let b = Tensor::from_vec(data(n, 0.2), n, &dev)?;
            let kn = PackedLinear::from_tensor(&w, true, Some(&b))?.unwrap();
            let nk = PackedLinear::from_tensor(&w.t()?.contiguous()?, false, Some(&b))?.unwrap();
            for m in (1..=17).chain([40, 300]) {
                let x = Tensor::from_vec(data(m * k, m as f32), (m, k), &dev)?;
                let want = x.matmul(&w)?.broadcast_add(&b)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                for (p, gelu) in [(&kn, false), (&nk, false), (&kn, true)] {
                    let got = match p.forward_tensor(&x, gelu)? {
                        Some(t) => t,
                        // above MAX_ROWS: the slice API
                        None => {
                            let mut o = vec![0f32; m * n];
                            let xv = x.flatten_all()?.to_vec1::<f32>()?;
                            if gelu {
                                p.forward_gelu(&xv, m, &mut o);
                            } else {
                                p.forward(&xv, m, &mut o);
                            }
                            Tensor::from_vec(o, (m, n), &dev)?
                        }
                    };
                    let want = if gelu { want.gelu()? } else { want.clone() };
                    let d = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(d <= 1e-5 * scale, "k {k} n {n} m {m} gelu {gelu}: {d}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        // large enough to be split over the threads
        let (k, n) = (300, 1000);
        let w = data(k * n, 0.7);
        let p = PackedLinear::from_kn(&w, k, n, None);
        let x = data(7 * k, 5.0);
        for isa in isas() {
            let mut all = vec![0f32; 7 * n];
            p.forward_isa(&x, 7, &mut all, true, isa);
            for r in 0..7 {
                let mut one = vec![0f32; n];
                p.forward_isa(&x[r * k..(r + 1) * k], 1, &mut one, true, isa);
                assert_eq!(
                    one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    all[r * n..(r + 1) * n]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "row {r} {isa:?}"
                );
            }
        }
    }
}
