//! CPU training kernels for the small image CNN ([`crate::models::cnn`]): a 3×3 convolution
//! (padding 1) + bias + 2×2 max-pool + ReLU block and a linear (+ ReLU) layer, forward and
//! backward, on plain f32 slices.
//!
//! * The convolution is im2col + one GEMM (the `gemm` crate, AVX-512 / AVX2 micro-kernels); the
//!   bias rides along as a trailing column of ones, so the weight-gradient GEMM yields the bias
//!   gradient too. Pooling, ReLU and the argmax bookkeeping are fused after the GEMM while the
//!   block of rows is still in cache.
//! * Work is split into tasks of a **fixed** size (a few images, or 16 rows), independent of
//!   the thread count, run on candle's own worker pool (the one its element-wise ops use, so
//!   no second pool spins against it). Each task writes its own output elements; reductions
//!   over the batch (weight gradients) sum per-task partials in task order. Results are
//!   therefore bit-identical for any thread count.

use candle_core::utils::{barrier_pool, get_num_threads};
use std::cell::RefCell;
use std::marker::PhantomData;

/// Images per task of a convolution block (fixed: the weight-gradient partial sums, and so the
/// rounding, must not depend on the thread count).
pub const IMAGES_PER_TASK: usize = 4;
/// Rows per task of a linear layer.
pub const ROWS_PER_TASK: usize = 16;

/// Runs `f(0..n)` on candle's worker pool (inline with one thread or one task).
pub fn par_tasks(n: usize, f: impl Fn(usize) + Sync) {
    par_tasks_if(true, n, f)
}

/// Multiply-adds below which a layer runs on the calling thread: waking the pool costs more.
const MIN_PARALLEL_WORK: usize = 1 << 18;

/// [`par_tasks`], or inline when `parallel` is false (the same tasks, so the same results).
pub fn par_tasks_if(parallel: bool, n: usize, f: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    if !parallel || n == 1 || get_num_threads() <= 1 {
        (0..n).for_each(f);
        return;
    }
    barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

/// A mutable slice that tasks write in disjoint ranges.
pub struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _p: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only touch disjoint ranges (checked by the callers' index arithmetic).
unsafe impl<T: Send> Sync for Shared<'_, T> {}
unsafe impl<T: Send> Send for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        Shared {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _p: PhantomData,
        }
    }
    /// `[start, start + len)`.
    ///
    /// # Safety
    /// No two live slices may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "Shared::range out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// Strided matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with row stride `ld`.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: ld,
        }
    }
    fn check(&self, r: usize, c: usize) {
        if r > 0 && c > 0 {
            assert!(
                (r - 1) * self.rs + (c - 1) * self.cs < self.data.len(),
                "matrix view out of bounds"
            );
        }
    }
}

/// `dst[m, n] (row stride ld) (+)= a[m, k] · b[k, n]`, single-threaded.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ld + n <= dst.len(), "gemm destination too small");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ld..r * ld + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k);
    b.check(k, n);
    // SAFETY: every index the strides reach was bounds-checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3×3 convolution block

/// Sizes of a convolution block: input `[n, h, w, ci]` (NHWC), weights `[co, ci, 3, 3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub ci: usize,
    pub co: usize,
}

impl ConvShape {
    /// Columns of an im2col row: 9 taps × input channels, then the constant 1 of the bias.
    pub fn k(&self) -> usize {
        9 * self.ci + 1
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Pooled output elements per image.
    pub fn out_per_image(&self) -> usize {
        (self.h / 2) * (self.w / 2) * self.co
    }
    fn tasks(&self) -> usize {
        self.n.div_ceil(IMAGES_PER_TASK)
    }
    fn task_images(&self, t: usize) -> (usize, usize) {
        let b0 = t * IMAGES_PER_TASK;
        (b0, (b0 + IMAGES_PER_TASK).min(self.n))
    }
}

/// `[co, 9·ci + 1]`: the weights in im2col column order `(ky, kx, c)`, then the bias.
pub fn pack_weights(s: &ConvShape, w: &[f32], b: &[f32]) -> Vec<f32> {
    let k = s.k();
    let mut out = vec![0f32; s.co * k];
    for o in 0..s.co {
        for c in 0..s.ci {
            for t in 0..9 {
                out[o * k + t * s.ci + c] = w[(o * s.ci + c) * 9 + t];
            }
        }
        out[o * k + 9 * s.ci] = b[o];
    }
    out
}

#[inline(always)]
fn fill_zero(d: &mut [f32]) {
    d.fill(0.0)
}

#[inline(always)]
fn fill_copy(d: &mut [f32], s: &[f32]) {
    d.copy_from_slice(s)
}

/// im2col of images `x` (`[nb, h, w, c]`) into `cols` (`[nb·h·w, 9c + 1]`, every element
/// written): taps `(ky, kx)` of `c` channels, then a 1. `C` is `c` when known at compile time
/// (0: not), so that the per-tap copies compile to straight vector moves.
#[inline(always)]
fn im2col_t<const C: usize>(x: &[f32], nb: usize, h: usize, w: usize, c: usize, cols: &mut [f32]) {
    let c = if C > 0 { C } else { c };
    let k = 9 * c + 1;
    assert_eq!(cols.len(), nb * h * w * k);
    assert!(x.len() >= nb * h * w * c);
    let mut rows = cols.chunks_exact_mut(k);
    for b in 0..nb {
        for y in 0..h {
            for xx in 0..w {
                let row = rows.next().unwrap();
                let interior = xx >= 1 && xx + 1 < w;
                for ky in 0..3 {
                    let yy = y + ky;
                    let dst = &mut row[ky * 3 * c..][..3 * c];
                    if yy == 0 || yy > h {
                        fill_zero(dst);
                    } else if interior {
                        // the three taps of a row are three neighbouring pixels: one copy
                        let src = &x[((b * h + yy - 1) * w + xx - 1) * c..][..3 * c];
                        fill_copy(dst, src);
                    } else {
                        for kx in 0..3 {
                            let xs = xx + kx;
                            let dst = &mut dst[kx * c..][..c];
                            if xs == 0 || xs > w {
                                fill_zero(dst);
                            } else {
                                let src = &x[((b * h + yy - 1) * w + xs - 1) * c..][..c];
                                fill_copy(dst, src);
                            }
                        }
                    }
                }
                row[9 * c] = 1.0;
            }
        }
    }
}

/// im2col (see [`im2col_t`]) into `cols`.
pub(crate) fn im2col(x: &[f32], nb: usize, h: usize, w: usize, c: usize, cols: &mut [f32]) {
    match c {
        1 => im2col_t::<1>(x, nb, h, w, c, cols),
        3 => im2col_t::<3>(x, nb, h, w, c, cols),
        4 => im2col_t::<4>(x, nb, h, w, c, cols),
        8 => im2col_t::<8>(x, nb, h, w, c, cols),
        16 => im2col_t::<16>(x, nb, h, w, c, cols),
        32 => im2col_t::<32>(x, nb, h, w, c, cols),
        _ => im2col_t::<0>(x, nb, h, w, c, cols),
    }
}

thread_local! {
    /// Per-thread scratch buffers of the kernels, reused from call to call.
    static SCRATCH: [RefCell<Vec<f32>>; 3] = const {
        [RefCell::new(Vec::new()), RefCell::new(Vec::new()), RefCell::new(Vec::new())]
    };
}

/// Runs `f` on scratch buffer `slot` of this thread, `len` long. Its contents are stale values
/// of earlier calls: `f` must write every element it reads.
fn with_scratch<R>(slot: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut b = s[slot].borrow_mut();
        if b.len() < len {
            b.resize(len, 0.0);
        }
        f(&mut b[..len])
    })
}

/// Adds the im2col-shaped gradient `dcols` (`[nb·h·w, 9c]`) into `dx` (`[nb, h, w, c]`,
/// zeroed by the caller), taps in a fixed order; the rows of `dcols` are `ld ≥ 9c` apart.
#[inline(always)]
fn col2im_t<const C: usize>(
    dcols: &[f32],
    ld: usize,
    nb: usize,
    h: usize,
    w: usize,
    c: usize,
    dx: &mut [f32],
) {
    let c = if C > 0 { C } else { c };
    for b in 0..nb {
        for y in 0..h {
            for xx in 0..w {
                let row = &dcols[((b * h + y) * w + xx) * ld..][..9 * c];
                for ky in 0..3 {
                    let yy = y + ky;
                    if yy == 0 || yy > h {
                        continue;
                    }
                    for kx in 0..3 {
                        let xs = xx + kx;
                        if xs == 0 || xs > w {
                            continue;
                        }
                        let d = &mut dx[((b * h + yy - 1) * w + xs - 1) * c..][..c];
                        for (d, s) in d.iter_mut().zip(&row[(ky * 3 + kx) * c..][..c]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

/// col2im (see [`col2im_t`]); `ld` is the row stride of `dcols` (9c, or 9c + 1 with the bias
/// column of [`im2col`]).
pub(crate) fn col2im(
    dcols: &[f32],
    ld: usize,
    nb: usize,
    h: usize,
    w: usize,
    c: usize,
    dx: &mut [f32],
) {
    match c {
        1 => col2im_t::<1>(dcols, ld, nb, h, w, c, dx),
        3 => col2im_t::<3>(dcols, ld, nb, h, w, c, dx),
        4 => col2im_t::<4>(dcols, ld, nb, h, w, c, dx),
        8 => col2im_t::<8>(dcols, ld, nb, h, w, c, dx),
        16 => col2im_t::<16>(dcols, ld, nb, h, w, c, dx),
        32 => col2im_t::<32>(dcols, ld, nb, h, w, c, dx),
        _ => col2im_t::<0>(dcols, ld, nb, h, w, c, dx),
    }
}

/// What a block's backward pass needs besides its input (whose im2col it recomputes per task,
/// in cache, rather than keeping `9·ci + 1` floats per pixel in memory).
pub struct ConvSaved {
    /// Per pooled output, in NHWC order whatever the output layout: which of the 4 window
    /// elements was the (first) maximum, row-major within the window.
    pub arg: Vec<u8>,
}

/// Max over each 2×2 window of `conv` (`[nb, h, w, co]` rows) with ReLU, per window the `co`
/// channels at once (branch-free, vectorisable); `emit(b, i, j, values, argmax)`.
fn pool_relu(
    conv: &[f32],
    nb: usize,
    h: usize,
    w: usize,
    co: usize,
    mut emit: impl FnMut(usize, usize, usize, &[f32], &[u8]),
) {
    let mut v = vec![0f32; co];
    let mut a = vec![0u8; co];
    for b in 0..nb {
        for i in 0..h / 2 {
            for j in 0..w / 2 {
                let r0 = ((b * h + 2 * i) * w + 2 * j) * co;
                let r1 = r0 + w * co;
                let (p0, p1) = (&conv[r0..r0 + co], &conv[r0 + co..r0 + 2 * co]);
                let (p2, p3) = (&conv[r1..r1 + co], &conv[r1 + co..r1 + 2 * co]);
                for ch in 0..co {
                    let (mut m, mut q) = (p0[ch], 0u8);
                    if p1[ch] > m {
                        m = p1[ch];
                        q = 1;
                    }
                    if p2[ch] > m {
                        m = p2[ch];
                        q = 2;
                    }
                    if p3[ch] > m {
                        m = p3[ch];
                        q = 3;
                    }
                    v[ch] = m.max(0.0);
                    a[ch] = q;
                }
                emit(b, i, j, &v, &a);
            }
        }
    }
}

/// Forward pass of `relu(max_pool2(conv3x3(x) + b))`: `x` NHWC `[n, h, w, ci]` (h, w even),
/// `wm` from [`pack_weights`]; the output is NHWC `[n, h/2, w/2, co]`, or NCHW
/// `[n, co, h/2, w/2]` with `nchw`. With `save`, also what [`conv_block_bwd`] needs.
pub fn conv_block_fwd(
    s: &ConvShape,
    x: &[f32],
    wm: &[f32],
    nchw: bool,
    save: bool,
) -> (Vec<f32>, Option<ConvSaved>) {
    let (k, hw, co) = (s.k(), s.hw(), s.co);
    let (h2, w2) = (s.h / 2, s.w / 2);
    let opi = s.out_per_image();
    assert_eq!(x.len(), s.n * hw * s.ci);
    assert_eq!(wm.len(), co * k);
    let tasks = s.tasks();
    let mut out = vec![0f32; s.n * opi];
    let mut arg = if save {
        vec![0u8; out.len()]
    } else {
        Vec::new()
    };
    {
        let (out_s, arg_s) = (Shared::new(&mut out), Shared::new(&mut arg));
        par_tasks(tasks, |t| {
            let (b0, b1) = s.task_images(t);
            let nb = b1 - b0;
            let rows = nb * hw;
            with_scratch(0, rows * k, |cols| {
                im2col(&x[b0 * hw * s.ci..b1 * hw * s.ci], nb, s.h, s.w, s.ci, cols);
                with_scratch(1, rows * co, |conv| {
                    gemm(
                        rows,
                        co,
                        k,
                        conv,
                        co,
                        false,
                        Mat::rows(cols, k),
                        Mat::t(wm, k),
                    );
                    // SAFETY: task t owns images b0..b1 of the outputs.
                    let out_t = unsafe { out_s.range(b0 * opi, nb * opi) };
                    let mut arg_t = save.then(|| unsafe { arg_s.range(b0 * opi, nb * opi) });
                    pool_relu(conv, nb, s.h, s.w, co, |b, i, j, v, a| {
                        let o = ((b * h2 + i) * w2 + j) * co;
                        if nchw {
                            for (ch, v) in v.iter().enumerate() {
                                out_t[((b * co + ch) * h2 + i) * w2 + j] = *v;
                            }
                        } else {
                            out_t[o..o + co].copy_from_slice(v);
                        }
                        if let Some(at) = arg_t.as_deref_mut() {
                            at[o..o + co].copy_from_slice(a);
                        }
                    });
                });
            });
        });
    }
    (out, save.then_some(ConvSaved { arg }))
}

/// Backward pass of [`conv_block_fwd`]: from the output gradient `g` and output `y` (same
/// layout), the packed weight gradient `[co, 9ci + 1]` (bias gradient in the last column) and,
/// with `need_dx`, the input gradient (NHWC).
#[allow(clippy::too_many_arguments)]
pub fn conv_block_bwd(
    s: &ConvShape,
    x: &[f32],
    saved: &ConvSaved,
    wm: &[f32],
    g: &[f32],
    y: &[f32],
    nchw: bool,
    need_dx: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (k, hw, co, ci) = (s.k(), s.hw(), s.co, s.ci);
    let (h2, w2) = (s.h / 2, s.w / 2);
    let opi = s.out_per_image();
    assert_eq!(g.len(), s.n * opi);
    assert_eq!(y.len(), g.len());
    let tasks = s.tasks();
    assert_eq!(x.len(), s.n * hw * ci);
    let mut partial = vec![0f32; tasks * co * k];
    let mut dx = if need_dx {
        vec![0f32; s.n * hw * ci]
    } else {
        Vec::new()
    };
    {
        let (part_s, dx_s) = (Shared::new(&mut partial), Shared::new(&mut dx));
        par_tasks(tasks, |t| {
            let (b0, b1) = s.task_images(t);
            let nb = b1 - b0;
            let rows = nb * hw;
            // SAFETY: task t owns partial t and images b0..b1 of dx.
            let part = unsafe { part_s.range(t * co * k, co * k) };
            with_scratch(0, rows * k, |cols| {
                im2col(&x[b0 * hw * ci..b1 * hw * ci], nb, s.h, s.w, ci, cols);
                with_scratch(1, rows * co, |dconv| {
                    // the output gradient where the ReLU passed it, in NHWC order (as `arg`)
                    let (o0, o1) = (b0 * opi, b1 * opi);
                    let gm: Vec<f32> = if nchw {
                        let mut gm = vec![0f32; o1 - o0];
                        let hw2 = h2 * w2;
                        for (b, gb) in gm.chunks_exact_mut(opi).enumerate() {
                            let ob = o0 + b * opi;
                            for (p, gp) in gb.chunks_exact_mut(co).enumerate() {
                                for (ch, d) in gp.iter_mut().enumerate() {
                                    let o = ob + ch * hw2 + p;
                                    *d = if y[o] > 0.0 { g[o] } else { 0.0 };
                                }
                            }
                        }
                        gm
                    } else {
                        g[o0..o1]
                            .iter()
                            .zip(&y[o0..o1])
                            .map(|(g, y)| if *y > 0.0 { *g } else { 0.0 })
                            .collect()
                    };
                    let arg = &saved.arg[o0..o1];
                    for b in 0..nb {
                        for i in 0..h2 {
                            for j in 0..w2 {
                                let o = ((b * h2 + i) * w2 + j) * co;
                                let r0 = ((b * s.h + 2 * i) * s.w + 2 * j) * co;
                                let (top, bot) =
                                    dconv[r0..r0 + (s.w + 2) * co].split_at_mut(s.w * co);
                                let (p0, p1) = top[..2 * co].split_at_mut(co);
                                let (p2, p3) = bot[..2 * co].split_at_mut(co);
                                let (gw, aw) = (&gm[o..o + co], &arg[o..o + co]);
                                let (p0, p1, p2, p3) =
                                    (&mut p0[..co], &mut p1[..co], &mut p2[..co], &mut p3[..co]);
                                for ch in 0..co {
                                    // branch-free select through bit masks (vectorises)
                                    let (gb, q) = (gw[ch].to_bits(), aw[ch] as u32);
                                    let m = |k: u32| {
                                        f32::from_bits(gb & 0u32.wrapping_sub((q == k) as u32))
                                    };
                                    p0[ch] = m(0);
                                    p1[ch] = m(1);
                                    p2[ch] = m(2);
                                    p3[ch] = m(3);
                                }
                            }
                        }
                    }
                    // the transposed weight gradient colsᵀ·dY: `cols` is then a column-major
                    // operand the GEMM reads in place, and only the narrower dY gets packed
                    gemm(
                        k,
                        co,
                        rows,
                        part,
                        co,
                        false,
                        Mat::t(cols, k),
                        Mat::rows(dconv, co),
                    );
                    if need_dx {
                        with_scratch(2, rows * 9 * ci, |dcols| {
                            gemm(
                                rows,
                                9 * ci,
                                co,
                                dcols,
                                9 * ci,
                                false,
                                Mat::rows(dconv, co),
                                Mat::rows(wm, k),
                            );
                            let dx_t = unsafe { dx_s.range(b0 * hw * ci, rows * ci) };
                            col2im(dcols, 9 * ci, nb, s.h, s.w, ci, dx_t);
                        });
                    }
                });
            });
        });
    }
    // sum of the per-task partials in task order, transposed back to `[co, 9ci + 1]`
    let mut sum = vec![0f32; co * k];
    for (t, p) in partial.chunks_exact(co * k).enumerate() {
        if t == 0 {
            sum.copy_from_slice(p);
            continue;
        }
        for (d, v) in sum.iter_mut().zip(p) {
            *d += v;
        }
    }
    let mut dwm = vec![0f32; co * k];
    for (j, row) in sum.chunks_exact(co).enumerate() {
        for (o, v) in row.iter().enumerate() {
            dwm[o * k + j] = *v;
        }
    }
    (dwm, need_dx.then_some(dx))
}

/// Splits a packed weight gradient into `[co, ci, 3, 3]` and `[co]`.
pub fn unpack_weights(s: &ConvShape, dwm: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let k = s.k();
    let mut dw = vec![0f32; s.co * s.ci * 9];
    let mut db = vec![0f32; s.co];
    for o in 0..s.co {
        for c in 0..s.ci {
            for t in 0..9 {
                dw[(o * s.ci + c) * 9 + t] = dwm[o * k + t * s.ci + c];
            }
        }
        db[o] = dwm[o * k + 9 * s.ci];
    }
    (dw, db)
}

// ---------------------------------------------------------------------------------------------
// linear layer

/// `y = x·Wᵀ + b` (then ReLU with `relu`): `x` `[n, din]`, `w` `[dout, din]`, `b` `[dout]`.
pub fn linear_fwd(x: &[f32], n: usize, din: usize, w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
    let dout = b.len();
    assert_eq!(x.len(), n * din);
    assert_eq!(w.len(), dout * din);
    let mut y = vec![0f32; n * dout];
    {
        let ys = Shared::new(&mut y);
        let big = n * din * dout >= MIN_PARALLEL_WORK;
        par_tasks_if(big, n.div_ceil(ROWS_PER_TASK), |t| {
            let r0 = t * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(n);
            // SAFETY: task t owns rows r0..r1.
            let yt = unsafe { ys.range(r0 * dout, (r1 - r0) * dout) };
            for row in yt.chunks_exact_mut(dout) {
                row.copy_from_slice(b);
            }
            gemm(
                r1 - r0,
                dout,
                din,
                yt,
                dout,
                true,
                Mat::rows(&x[r0 * din..r1 * din], din),
                Mat::t(w, din),
            );
            if relu {
                yt.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
    }
    y
}

/// Backward pass of [`linear_fwd`] from the output gradient `g` and output `y`: (dW, db, dx);
/// dx only with `need_dx`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd(
    x: &[f32],
    n: usize,
    din: usize,
    w: &[f32],
    dout: usize,
    g: &[f32],
    y: &[f32],
    relu: bool,
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    assert_eq!(w.len(), dout * din);
    assert_eq!(g.len(), n * dout);
    let gm: Vec<f32> = if relu {
        g.iter()
            .zip(y)
            .map(|(g, y)| if *y > 0.0 { *g } else { 0.0 })
            .collect()
    } else {
        g.to_vec()
    };
    let mut db = vec![0f32; dout];
    for row in gm.chunks_exact(dout) {
        for (d, v) in db.iter_mut().zip(row) {
            *d += v;
        }
    }
    // dW = gmᵀ·x, split over column blocks of dW (each sum over the batch stays whole)
    const COLS: usize = 256;
    let col_tasks = din.div_ceil(COLS);
    let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); col_tasks];
    let mut dx = if need_dx {
        vec![0f32; n * din]
    } else {
        Vec::new()
    };
    let row_tasks = if need_dx {
        n.div_ceil(ROWS_PER_TASK)
    } else {
        0
    };
    {
        let (bs, dxs) = (Shared::new(&mut blocks), Shared::new(&mut dx));
        let big = n * din * dout >= MIN_PARALLEL_WORK;
        par_tasks_if(big, col_tasks + row_tasks, |t| {
            if t < col_tasks {
                let c0 = t * COLS;
                let cw = COLS.min(din - c0);
                let mut d = vec![0f32; dout * cw];
                gemm(
                    dout,
                    cw,
                    n,
                    &mut d,
                    cw,
                    false,
                    Mat::t(&gm, dout),
                    Mat::rows(&x[c0..], din),
                );
                // SAFETY: task t owns block t.
                let slot = unsafe { bs.range(t, 1) };
                slot[0] = d;
            } else {
                let t = t - col_tasks;
                let r0 = t * ROWS_PER_TASK;
                let r1 = (r0 + ROWS_PER_TASK).min(n);
                // SAFETY: this task owns rows r0..r1 of dx.
                let d = unsafe { dxs.range(r0 * din, (r1 - r0) * din) };
                gemm(
                    r1 - r0,
                    din,
                    dout,
                    d,
                    din,
                    false,
                    Mat::rows(&gm[r0 * dout..r1 * dout], dout),
                    Mat::rows(w, din),
                );
            }
        });
    }
    let mut dw = vec![0f32; dout * din];
    for (t, blk) in blocks.iter().enumerate() {
        let c0 = t * COLS;
        let cw = blk.len() / dout.max(1);
        for o in 0..dout {
            dw[o * din + c0..o * din + c0 + cw].copy_from_slice(&blk[o * cw..(o + 1) * cw]);
        }
    }
    (dw, db, need_dx.then_some(dx))
}
