//! A fused CPU f32 inference path for CLIP's ModifiedResNet image tower (RN50, RN101, ...).
//!
//! Activations are NHWC (`[N, H, W, C]`, one image pixel = one row of `C` floats), so a 1x1
//! convolution is a plain GEMM over the rows and a k×k convolution is a GEMM over im2col rows
//! built per block of output pixels. Eval-mode batch norms arrive already folded into the
//! convolution weights and biases; the weights are re-laid out once at load time as `[k·k·C, O]`.
//!
//! Every convolution runs as one parallel pass over blocks of output rows (a few blocks per
//! thread): each block builds its im2col rows in a per-thread buffer, runs a single-threaded GEMM
//! into its output rows (a bottleneck's shortcut 1x1 convolution is a second GEMM accumulating into
//! the same rows), then adds the bias (and the identity shortcut) and applies ReLU while the rows
//! are still in cache. Average pools are a separate
//! parallel pass. The attention pool only needs the pooled (mean-token) query, so its keys and
//! values are never formed: for each head `h`, `q_h·(W_k,h t + b_k,h)` is `(W_k,hᵀ q_h)·t` plus a
//! constant that softmax removes, and `Σ_j p_j (W_v,h t_j + b_v,h) = W_v,h (Σ_j p_j t_j) + b_v,h`
//! because the weights sum to one: two small per-head GEMMs replace the `[N·(HW+1), C] × [C, C]`
//! key and value projections.
//!
//! Each output element is written by exactly one task in a fixed order, so the result is
//! bit-identical run to run for a given thread count and CPU.

use super::cpu;
use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Mutex;

/// Floats of one block's im2col rows and of its output rows (2 MiB each). On a 2-core AVX-512
/// Xeon (2 MiB L2 per core), RN50 at batch 32 took the same CPU time (within 3 %) with blocks of
/// 2^18, 2^19 or 2^20 floats and 15-20 % more with 2^16 (small blocks repack the weights often).
const COLS_FLOATS: usize = 1 << 19;
const OUT_FLOATS: usize = 1 << 19;

/// A convolution with its batch norm folded in, weights as `[k·k·C_in, C_out]` (rows ordered
/// `(ky, kx, c)`, matching the NHWC im2col rows).
pub struct Conv {
    w: Vec<f32>,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
    k: usize,
    pad: usize,
    stride: usize,
}

impl Conv {
    /// From folded PyTorch-layout weights `[O, C, k, k]` and bias (`O` values in any shape).
    pub fn from_folded(w: &Tensor, b: &Tensor, pad: usize, stride: usize) -> Result<Conv> {
        let (cout, cin, kh, kw) = w.dims4()?;
        if kh != kw || stride == 0 {
            bail!("fused ResNet: square kernels and a positive stride only");
        }
        let wt = w
            .to_dtype(DType::F32)?
            .permute((2, 3, 1, 0))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if b.len() != cout {
            bail!(
                "fused ResNet: bias has {} values for {cout} channels",
                b.len()
            );
        }
        Ok(Conv {
            w: wt,
            b,
            cin,
            cout,
            k: kh,
            pad,
            stride,
        })
    }

    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.k) / self.stride + 1,
            (w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// Rows of the GEMM's inner dimension.
    fn kk(&self) -> usize {
        self.k * self.k * self.cin
    }

    /// A 1x1 stride-1 convolution reads the NHWC rows as they are.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// One convolution of a sum: `conv` applied to the NHWC batch `x` of `h`×`w` images.
struct Term<'a> {
    conv: &'a Conv,
    x: &'a [f32],
    h: usize,
    w: usize,
}

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// im2col rows `r0 .. r0 + rows` (output pixels, image-major) of `t` into `cols` `[rows, k·k·C]`.
fn im2col(t: &Term, ho: usize, wo: usize, r0: usize, rows: usize, cols: &mut [f32]) {
    let Conv {
        cin: c,
        k,
        pad,
        stride,
        ..
    } = *t.conv;
    let kk = k * k * c;
    let (h, w) = (t.h as isize, t.w as isize);
    for (i, dst) in cols[..rows * kk].chunks_exact_mut(kk).enumerate() {
        let r = r0 + i;
        let img = r / (ho * wo);
        let (oy, ox) = ((r / wo) % ho, r % wo);
        let base = img * t.h * t.w;
        for ky in 0..k {
            let iy = (oy * stride + ky) as isize - pad as isize;
            let ix0 = (ox * stride) as isize - pad as isize;
            if stride == 1 && iy >= 0 && iy < h && ix0 >= 0 && ix0 + k as isize <= w {
                // the k taps of this kernel row are one contiguous run of the input row
                let s = (base + iy as usize * t.w + ix0 as usize) * c;
                dst[ky * k * c..(ky + 1) * k * c].copy_from_slice(&t.x[s..s + k * c]);
                continue;
            }
            for kx in 0..k {
                let ix = (ox * stride + kx) as isize - pad as isize;
                let d = &mut dst[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                if iy >= 0 && iy < h && ix >= 0 && ix < w {
                    let s = (base + iy as usize * t.w + ix as usize) * c;
                    if c < 16 {
                        // the stem's 3 colour channels: no memcpy call per tap
                        d.iter_mut().zip(&t.x[s..s + c]).for_each(|(d, v)| *d = *v);
                    } else {
                        d.copy_from_slice(&t.x[s..s + c]);
                    }
                } else {
                    d.fill(0.0);
                }
            }
        }
    }
}

/// `out[m, O] = act(bias + residual[m] + Σ_terms conv(x)[m])` over the `n·H'·W'` output pixels
/// (every term has the same output grid and `O`); one parallel pass over blocks of rows.
fn conv_sum(
    n: usize,
    terms: &[Term],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let cout = terms[0].conv.cout;
    let (ho, wo) = terms[0].conv.out_hw(terms[0].h, terms[0].w);
    for t in terms {
        assert_eq!(t.conv.cout, cout);
        assert_eq!(t.conv.out_hw(t.h, t.w), (ho, wo));
        assert!(t.x.len() >= n * t.h * t.w * t.conv.cin);
    }
    let m = n * ho * wo;
    assert!(out.len() >= m * cout && bias.len() == cout);
    if let Some(r) = residual {
        assert!(r.len() >= m * cout);
    }
    if m == 0 {
        return;
    }
    let kmax = terms
        .iter()
        .filter(|t| !t.conv.direct())
        .map(|t| t.conv.kk())
        .max()
        .unwrap_or(1);
    let cap = (COLS_FLOATS / kmax).min(OUT_FLOATS / cout).max(16);
    let th = cpu::threads();
    let blocks = m.div_ceil(cap).div_ceil(th) * th;
    let rows = m.div_ceil(blocks);
    out[..m * cout]
        .par_chunks_mut(rows * cout)
        .enumerate()
        .for_each(|(bi, o)| {
            let r0 = bi * rows;
            let nr = o.len() / cout;
            for (ti, t) in terms.iter().enumerate() {
                let kk = t.conv.kk();
                // lhs rows of `kk` floats at stride `ld`, weights `[kk, cout]` row-major,
                // `o` `[nr, cout]` row-major (the views are bounds-checked by conv::gemm)
                assert_eq!(t.conv.w.len(), kk * cout, "weights [kk, cout]");
                let gemm = |lhs: &[f32], ld: usize, o: &mut [f32]| {
                    super::conv::gemm(
                        nr,
                        cout,
                        kk,
                        o,
                        cout,
                        ti > 0,
                        super::conv::Mat::rows(lhs, ld),
                        super::conv::Mat::rows(&t.conv.w, cout),
                    )
                };
                if t.conv.direct() {
                    gemm(&t.x[r0 * kk..(r0 + nr) * kk], kk, o);
                } else {
                    COLS.with(|c| {
                        let mut cols = c.borrow_mut();
                        if cols.len() < nr * kk {
                            cols.resize(nr * kk, 0.0);
                        }
                        im2col(t, ho, wo, r0, nr, &mut cols);
                        gemm(&cols[..nr * kk], kk, o);
                    });
                }
            }
            // epilogue while the rows are in cache: bias, residual, ReLU
            let lo = if relu { 0.0 } else { f32::NEG_INFINITY };
            match residual {
                Some(res) => {
                    let res = &res[r0 * cout..(r0 + nr) * cout];
                    for (orow, rrow) in o.chunks_exact_mut(cout).zip(res.chunks_exact(cout)) {
                        for ((d, a), b) in orow.iter_mut().zip(rrow).zip(bias) {
                            *d = (*d + a + b).max(lo);
                        }
                    }
                }
                None => o.chunks_exact_mut(cout).for_each(|orow| {
                    for (d, b) in orow.iter_mut().zip(bias) {
                        *d = (*d + b).max(lo);
                    }
                }),
            }
        });
}

/// `s`×`s` average pool (stride `s`, floor) of the NHWC batch `x` `[n, h, w, c]` into `out`.
fn avg_pool(x: &[f32], n: usize, h: usize, w: usize, c: usize, s: usize, out: &mut [f32]) {
    let (ho, wo) = (h / s, w / s);
    let len = n * ho * wo * c;
    assert!(x.len() >= n * h * w * c && out.len() >= len);
    if len == 0 {
        return;
    }
    let inv = 1.0 / (s * s) as f32;
    let row = wo * c;
    // whole output rows per task, a few tasks per thread
    let rows = (n * ho).div_ceil(cpu::threads() * 4).max(1);
    out[..len]
        .par_chunks_mut(rows * row)
        .enumerate()
        .for_each(|(ti, o)| {
            for (ri, orow) in o.chunks_exact_mut(row).enumerate() {
                let r = ti * rows + ri;
                let (img, oy) = (r / ho, r % ho);
                for (ox, d) in orow.chunks_exact_mut(c).enumerate() {
                    d.fill(0.0);
                    for dy in 0..s {
                        for dx in 0..s {
                            let p = ((img * h + oy * s + dy) * w + ox * s + dx) * c;
                            for (a, v) in d.iter_mut().zip(&x[p..p + c]) {
                                *a += v;
                            }
                        }
                    }
                    d.iter_mut().for_each(|a| *a *= inv);
                }
            }
        });
}

/// A bottleneck: 1x1, 3x3, avg-pool (stride > 1), 1x1, plus the shortcut (identity, or avg-pool
/// and a 1x1 convolution).
pub struct Bottleneck {
    c1: Conv,
    c2: Conv,
    c3: Conv,
    ds: Option<Conv>,
    stride: usize,
    /// conv3's bias plus the shortcut convolution's
    bias: Vec<f32>,
}

impl Bottleneck {
    pub fn new(c1: Conv, c2: Conv, c3: Conv, ds: Option<Conv>, stride: usize) -> Result<Self> {
        let ok = c1.direct()
            && c2.k == 3
            && c2.pad == 1
            && c2.stride == 1
            && c3.direct()
            && c2.cin == c1.cout
            && c3.cin == c2.cout
            && stride > 0
            && match &ds {
                Some(d) => d.direct() && d.cin == c1.cin && d.cout == c3.cout,
                None => stride == 1 && c1.cin == c3.cout,
            };
        if !ok {
            bail!("fused ResNet: unexpected bottleneck shapes");
        }
        let mut bias = c3.b.clone();
        if let Some(d) = &ds {
            bias.iter_mut().zip(&d.b).for_each(|(a, b)| *a += b);
        }
        Ok(Bottleneck {
            c1,
            c2,
            c3,
            ds,
            stride,
            bias,
        })
    }
}

/// Attention pooling: the mean token (plus its positional embedding) queries the mean token and
/// every position; heads of width `C / heads`.
pub struct AttnPool {
    /// `[HW + 1, C]`
    pos: Vec<f32>,
    wq: Vec<f32>,
    bq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    bv: Vec<f32>,
    wc: Vec<f32>,
    bc: Vec<f32>,
    heads: usize,
    c: usize,
    out: usize,
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl AttnPool {
    /// From `positional_embedding` `[HW+1, C]` and the q / k / v / c projections (PyTorch
    /// `[out, in]` weights); the key bias is not needed (softmax removes it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pos: &Tensor,
        wq: &Tensor,
        bq: &Tensor,
        wk: &Tensor,
        wv: &Tensor,
        bv: &Tensor,
        wc: &Tensor,
        bc: &Tensor,
        heads: usize,
    ) -> Result<Self> {
        let (_, c) = pos.dims2()?;
        let (out, ci) = wc.dims2()?;
        if heads == 0 || !c.is_multiple_of(heads) || ci != c {
            bail!("fused ResNet: attention pool of width {c} with {heads} heads");
        }
        for w in [wq, wk, wv] {
            if w.dims2()? != (c, c) {
                bail!("fused ResNet: attention pool projections must be [{c}, {c}]");
            }
        }
        Ok(AttnPool {
            pos: vec1(pos)?,
            wq: vec1(wq)?,
            bq: vec1(bq)?,
            wk: vec1(wk)?,
            wv: vec1(wv)?,
            bv: vec1(bv)?,
            wc: vec1(wc)?,
            bc: vec1(bc)?,
            heads,
            c,
            out,
        })
    }

    /// Pooled features `[n, out]` of the final NHWC feature map `x` `[n, hw, C]`.
    fn forward(&self, x: &[f32], n: usize, hw: usize) -> Vec<f32> {
        let (c, heads) = (self.c, self.heads);
        let hd = c / heads;
        let l = hw + 1;
        assert_eq!(self.pos.len(), l * c);
        // tokens [n, l, c]: mean token then the positions, plus the positional embedding
        let mut t = vec![0f32; n * l * c];
        t.par_chunks_mut(l * c).enumerate().for_each(|(i, ti)| {
            let xi = &x[i * hw * c..(i + 1) * hw * c];
            let (mean, rest) = ti.split_at_mut(c);
            for row in xi.chunks_exact(c) {
                mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
            }
            let inv = 1.0 / hw as f32;
            for (m, p) in mean.iter_mut().zip(&self.pos[..c]) {
                *m = *m * inv + p;
            }
            for ((d, v), p) in rest.iter_mut().zip(xi).zip(&self.pos[c..]) {
                *d = v + p;
            }
        });
        // q = W_q t_0 + b_q   [n, c]
        let mut q = vec![0f32; n * c];
        cpu::linear(
            &t,
            l * c,
            n,
            c,
            &self.wq,
            c,
            Some(&self.bq),
            None,
            &mut q,
            c,
        );
        // r[i, h] = W_k,hᵀ q_h   [n, heads, c]
        let mut r = vec![0f32; n * heads * c];
        let rp = SyncPtr(r.as_mut_ptr());
        (0..heads).into_par_iter().for_each(|h| {
            let rp = &rp;
            // SAFETY: head h writes columns [h·c, (h+1)·c) of each row of r; reads are in bounds
            // of q [n, c] and W_k [c, c].
            unsafe {
                gemm::gemm(
                    n,
                    c,
                    hd,
                    rp.0.add(h * c),
                    1,
                    (heads * c) as isize,
                    false,
                    q.as_ptr().add(h * hd),
                    1,
                    c as isize,
                    self.wk.as_ptr().add(h * hd * c),
                    1,
                    c as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
        // per image: p = softmax(scale · r tᵀ) [heads, l]; u = p t [heads, c] (into r)
        let scale = 1.0 / (hd as f32).sqrt();
        r.par_chunks_mut(heads * c).enumerate().for_each(|(i, ri)| {
            let ti = &t[i * l * c..(i + 1) * l * c];
            let mut s = vec![0f32; heads * l];
            // SAFETY: ri [heads, c], ti [l, c] (read as its transpose), s [heads, l].
            unsafe {
                gemm::gemm(
                    heads,
                    l,
                    c,
                    s.as_mut_ptr(),
                    1,
                    l as isize,
                    false,
                    ri.as_ptr(),
                    1,
                    c as isize,
                    ti.as_ptr(),
                    c as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
            for row in s.chunks_exact_mut(l) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = cpu::exp(*v - m);
                    sum += *v;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
            }
            // SAFETY: s [heads, l], ti [l, c], ri [heads, c] (r no longer read for image i).
            unsafe {
                gemm::gemm(
                    heads,
                    c,
                    l,
                    ri.as_mut_ptr(),
                    1,
                    c as isize,
                    false,
                    s.as_ptr(),
                    1,
                    l as isize,
                    ti.as_ptr(),
                    1,
                    c as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
        // o[i, h·hd + d] = W_v,h u[i, h] + b_v   [n, c]
        let mut o: Vec<f32> = (0..n).flat_map(|_| self.bv.iter().copied()).collect();
        let op = SyncPtr(o.as_mut_ptr());
        (0..heads).into_par_iter().for_each(|h| {
            let op = &op;
            // SAFETY: head h writes columns [h·hd, (h+1)·hd) of each row of o; u rows of c floats
            // at stride heads·c, W_v,h read transposed.
            unsafe {
                gemm::gemm(
                    n,
                    hd,
                    c,
                    op.0.add(h * hd),
                    1,
                    c as isize,
                    true,
                    r.as_ptr().add(h * c),
                    1,
                    (heads * c) as isize,
                    self.wv.as_ptr().add(h * hd * c),
                    c as isize,
                    1,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
        let mut y = vec![0f32; n * self.out];
        cpu::linear(
            &o,
            c,
            n,
            c,
            &self.wc,
            self.out,
            Some(&self.bc),
            None,
            &mut y,
            self.out,
        );
        y
    }
}

struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to parallel tasks.
unsafe impl Sync for SyncPtr {}

/// Reusable activation buffers (grown on demand, kept between calls).
#[derive(Default)]
struct Scratch {
    cur: Vec<f32>,
    nxt: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    tp: Vec<f32>,
    xp: Vec<f32>,
}

fn grown(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// The ModifiedResNet image tower: 3-conv stem and 2x2 average pool, bottleneck stages,
/// attention pool.
pub struct FastResNet {
    stem: [Conv; 3],
    blocks: Vec<Bottleneck>,
    pool: AttnPool,
    image: usize,
    scratch: Mutex<Scratch>,
}

impl FastResNet {
    pub fn new(
        stem: [Conv; 3],
        blocks: Vec<Bottleneck>,
        pool: AttnPool,
        image: usize,
    ) -> Result<Self> {
        let ok = stem[0].cin == 3
            && stem[1].cin == stem[0].cout
            && stem[2].cin == stem[1].cout
            && blocks.first().is_some_and(|b| b.c1.cin == stem[2].cout)
            && blocks.windows(2).all(|w| w[1].c1.cin == w[0].c3.cout)
            && blocks.last().is_some_and(|b| b.c3.cout == pool.c);
        if !ok {
            bail!("fused ResNet: stem, stages and attention pool do not chain");
        }
        Ok(FastResNet {
            stem,
            blocks,
            pool,
            image,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Whether `pixels` is a batch this path takes: f32 `[B, 3, S, S]` on the CPU with `S` the
    /// model's image size (anything else goes to the op-by-op path and its errors).
    pub fn accepts(&self, pixels: &Tensor) -> bool {
        pixels.dtype() == DType::F32
            && pixels.device().is_cpu()
            && pixels
                .dims4()
                .is_ok_and(|(_, c, h, w)| c == 3 && h == self.image && w == self.image)
    }

    /// Image features `[B, out]` of pixels `[B, 3, S, S]` (f32, CPU).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        if !self.accepts(pixels) {
            bail!(
                "fused ResNet expects f32 CPU pixels [B, 3, {0}, {0}], got {1:?}",
                self.image,
                pixels.dims()
            );
        }
        let (n, _, s, _) = pixels.dims4()?;
        let x0 = pixels
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let sc = &mut *guard;
        // stem: three 3x3 convolutions (the first strided), then a 2x2 average pool
        let (mut h, mut w) = (s, s);
        let mut src: &[f32] = &x0;
        let bufs = [&mut sc.t1, &mut sc.t2, &mut sc.cur];
        let mut outs: Vec<&mut Vec<f32>> = bufs.into_iter().collect();
        for (conv, buf) in self.stem.iter().zip(outs.iter_mut()) {
            let (ho, wo) = conv.out_hw(h, w);
            let o = grown(buf, n * ho * wo * conv.cout);
            let term = Term { conv, x: src, h, w };
            conv_sum(n, &[term], &conv.b, None, true, o);
            (h, w) = (ho, wo);
            src = o;
        }
        let c = self.stem[2].cout;
        let (hp, wp) = (h / 2, w / 2);
        avg_pool(&sc.cur, n, h, w, c, 2, grown(&mut sc.nxt, n * hp * wp * c));
        (h, w) = (hp, wp);
        std::mem::swap(&mut sc.cur, &mut sc.nxt);

        for b in &self.blocks {
            let (cin, p) = (b.c1.cin, b.c1.cout);
            let cur = &sc.cur[..n * h * w * cin];
            let t1 = grown(&mut sc.t1, n * h * w * p);
            conv_sum(
                n,
                &[Term {
                    conv: &b.c1,
                    x: cur,
                    h,
                    w,
                }],
                &b.c1.b,
                None,
                true,
                t1,
            );
            let t2 = grown(&mut sc.t2, n * h * w * p);
            conv_sum(
                n,
                &[Term {
                    conv: &b.c2,
                    x: &sc.t1[..n * h * w * p],
                    h,
                    w,
                }],
                &b.c2.b,
                None,
                true,
                t2,
            );
            let s = b.stride;
            let (h2, w2) = (h / s, w / s);
            let (main, short): (&[f32], &[f32]) = if s > 1 {
                avg_pool(&sc.t2, n, h, w, p, s, grown(&mut sc.tp, n * h2 * w2 * p));
                if b.ds.is_some() {
                    avg_pool(cur, n, h, w, cin, s, grown(&mut sc.xp, n * h2 * w2 * cin));
                }
                (&sc.tp, &sc.xp)
            } else {
                (&sc.t2, cur)
            };
            let mut terms = vec![Term {
                conv: &b.c3,
                x: main,
                h: h2,
                w: w2,
            }];
            if let Some(d) = &b.ds {
                terms.push(Term {
                    conv: d,
                    x: short,
                    h: h2,
                    w: w2,
                });
            }
            let residual = if b.ds.is_some() { None } else { Some(cur) };
            let out = grown(&mut sc.nxt, n * h2 * w2 * b.c3.cout);
            conv_sum(n, &terms, &b.bias, residual, true, out);
            (h, w) = (h2, w2);
            std::mem::swap(&mut sc.cur, &mut sc.nxt);
        }
        let hw = h * w;
        if hw + 1 != self.pool.pos.len() / self.pool.c {
            bail!(
                "the image gives a {h}x{w} feature grid but the attention pool has {} positions: \
                 feed images of the model's image_size",
                self.pool.pos.len() / self.pool.c - 1
            );
        }
        let y = self.pool.forward(&sc.cur, n, hw);
        Tensor::from_vec(y, (n, self.pool.out), &candle_core::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use crate::models::clip::open_clip::{
        parse_open_clip_config, random_open_clip_varmap, tiny_resnet_config_json, OpenClip,
    };
    use crate::testing::{max_abs, max_abs_diff, randn};
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    /// A random ModifiedResNet CLIP of `image` px, stem width `width`, `layers` blocks per stage.
    fn model(image: usize, width: usize, layers: [usize; 4], seed: u64) -> OpenClip {
        let mut json = tiny_resnet_config_json();
        let v = &mut json["model_cfg"]["vision_cfg"];
        v["image_size"] = image.into();
        v["width"] = width.into();
        v["layers"] = serde_json::json!(layers);
        let config = parse_open_clip_config(&json.to_string()).unwrap();
        let vm = random_open_clip_varmap(&config, seed, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        OpenClip::new(vb, &config, DType::F32).unwrap()
    }

    #[test]
    fn fused_resnet_matches_candle() {
        // (image, width, layers, batch): 1x1 and 2x2 attention-pool grids, odd batches, blocks
        // with and without a shortcut convolution
        for (i, (image, width, layers, batch)) in [
            (32, 4, [1, 1, 1, 1], 1),
            (32, 8, [2, 1, 2, 1], 3),
            (64, 4, [1, 2, 1, 1], 5),
            (64, 8, [1, 1, 1, 2], 2),
        ]
        .into_iter()
        .enumerate()
        {
            let m = model(image, width, layers, 10 + i as u64);
            assert!(
                m.has_fused_vision(),
                "f32 CPU model should get the fused path"
            );
            let x = randn(20 + i as u64, &[batch, 3, image, image]);
            let fast = m.encode_image(&x).unwrap();
            let slow = m.encode_image_unfused(&x).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            let d = max_abs_diff(&fast, &slow);
            let scale = max_abs(&slow);
            assert!(scale > 1e-3, "degenerate features");
            eprintln!("{image}px width {width} batch {batch}: max diff {d:.3e}, max {scale:.3e}");
            assert!(
                d <= 1e-4 * scale,
                "{image}px width {width} batch {batch}: features differ by {d} (max {scale})"
            );
        }
    }

    #[test]
    fn fused_rn50_matches_candle_at_full_size() {
        // RN50's vision tower (224 px, width 64, [3, 4, 6, 3], 32 heads, 1024-d) with a tiny
        // text tower
        let mut json = tiny_resnet_config_json();
        json["model_cfg"]["embed_dim"] = 1024.into();
        json["model_cfg"]["vision_cfg"] = serde_json::json!({
            "image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "head_width": 64,
            "patch_size": null
        });
        let config = parse_open_clip_config(&json.to_string()).unwrap();
        let vm = random_open_clip_varmap(&config, 7, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = OpenClip::new(vb, &config, DType::F32).unwrap();
        assert!(m.has_fused_vision());
        let x = randn(8, &[3, 3, 224, 224]);
        let fast = m.encode_image(&x).unwrap();
        let slow = m.encode_image_unfused(&x).unwrap();
        assert_eq!(fast.dims(), &[3, 1024]);
        let d = max_abs_diff(&fast, &slow);
        let scale = max_abs(&slow);
        eprintln!("RN50 size: max diff {d:.3e}, max {scale:.3e}");
        assert!(d <= 1e-4 * scale, "features differ by {d} (max {scale})");
    }

    #[test]
    fn fused_resnet_is_deterministic() {
        let m = model(64, 8, [1, 2, 1, 1], 3);
        let x = randn(4, &[7, 3, 64, 64]);
        let a = m.encode_image(&x).unwrap().to_vec2::<f32>().unwrap();
        let b = m.encode_image(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        // a smaller batch after a larger one reuses the grown buffers: same rows
        let c = m
            .encode_image(&x.narrow(0, 0, 3).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let slow = m.encode_image_unfused(&x.narrow(0, 0, 3).unwrap()).unwrap();
        let d = max_abs_diff(&candle_core::Tensor::new(c, &Device::Cpu).unwrap(), &slow);
        assert!(d <= 1e-4 * max_abs(&slow), "differ by {d}");
    }

    #[test]
    fn other_inputs_take_the_op_by_op_path() {
        let m = model(64, 4, [1, 1, 1, 1], 5);
        // a wrong size is the op-by-op path's error, not a fused-path panic
        let x = randn(1, &[2, 3, 96, 96]);
        let e = m.encode_image(&x).unwrap_err().to_string();
        assert!(e.contains("feature grid"), "{e}");
        // f16 models do not build the fused path
        let json = tiny_resnet_config_json();
        let config = parse_open_clip_config(&json.to_string()).unwrap();
        let vm = random_open_clip_varmap(&config, 1, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let h = OpenClip::new(vb, &config, DType::F16).unwrap();
        assert!(!h.has_fused_vision());
    }
}
