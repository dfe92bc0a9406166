//! A small CNN for square grayscale images (Fashion-MNIST, 28×28), about 106k parameters:
//!
//! ```text
//! conv 3×3 (1→16, pad 1) → ReLU → max-pool 2   28 → 14
//! conv 3×3 (16→32, pad 1) → ReLU → max-pool 2  14 → 7
//! flatten (32·7·7 = 1568) → linear → 64 → ReLU   = the features (input of the λ-net)
//! dropout → linear 64 → 10                        = the logits
//! ```
//!
//! Weights are drawn from a seeded ChaCha RNG with PyTorch's default initialisation
//! (U(−1/√fan_in, 1/√fan_in) for weights and biases), and dropout masks come from a seeded RNG
//! passed in by the caller, so a run is reproducible bit for bit. `scripts/bench_cnn_torch.py`
//! builds the same network in PyTorch.

use crate::equi::lambda::dropout_mask;
use anyhow::{bail, Context, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::Path;

/// The architecture's sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    pub in_channels: usize,
    /// Side of the square input (a multiple of 4).
    pub image_size: usize,
    pub conv1: usize,
    pub conv2: usize,
    pub hidden: usize,
    pub classes: usize,
    /// Dropout probability before the last linear layer (training only).
    pub dropout: f32,
}

impl CnnConfig {
    /// The Fashion-MNIST network of the module docs.
    pub fn fashion_mnist() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            conv1: 16,
            conv2: 32,
            hidden: 64,
            classes: 10,
            dropout: 0.3,
        }
    }
    /// A very small network for tests.
    pub fn tiny(image_size: usize, classes: usize) -> Self {
        Self {
            in_channels: 1,
            image_size,
            conv1: 4,
            conv2: 6,
            hidden: 12,
            classes,
            dropout: 0.3,
        }
    }
    fn flat(&self) -> usize {
        self.conv2 * (self.image_size / 4) * (self.image_size / 4)
    }
    /// (name, shape, fan_in) of every parameter, in a fixed order.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let k = 9;
        vec![
            (
                "conv1.weight",
                vec![self.conv1, self.in_channels, 3, 3],
                self.in_channels * k,
            ),
            ("conv1.bias", vec![self.conv1], self.in_channels * k),
            (
                "conv2.weight",
                vec![self.conv2, self.conv1, 3, 3],
                self.conv1 * k,
            ),
            ("conv2.bias", vec![self.conv2], self.conv1 * k),
            ("fc1.weight", vec![self.hidden, self.flat()], self.flat()),
            ("fc1.bias", vec![self.hidden], self.flat()),
            ("fc2.weight", vec![self.classes, self.hidden], self.hidden),
            ("fc2.bias", vec![self.classes], self.hidden),
        ]
    }
    pub fn n_params(&self) -> usize {
        self.params()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
    fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.image_size % 4 != 0 {
            bail!(
                "CNN image size {} must be a positive multiple of 4 (two 2× max-pools)",
                self.image_size
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("CNN dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }
}

/// The CNN. Its tensors are either trainable [`Var`]s of a [`VarMap`] or plain (frozen) tensors.
pub struct Cnn {
    pub config: CnnConfig,
    w: Vec<Tensor>,
}

/// Seeded PyTorch-default values for every parameter, in [`CnnConfig::params`] order.
fn init_values(cfg: &CnnConfig, seed: u64) -> Vec<Vec<f32>> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    cfg.params()
        .into_iter()
        .map(|(_, shape, fan_in)| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            (0..n)
                .map(|_| rng.random_range(-bound..bound))
                .collect::<Vec<f32>>()
        })
        .collect()
}

impl Cnn {
    /// A trainable CNN with seeded random weights.
    pub fn init(cfg: &CnnConfig, seed: u64, dev: &Device) -> Result<(VarMap, Cnn)> {
        crate::kernels::tune_allocator();
        cfg.validate()?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let vals = init_values(cfg, seed);
        for ((name, shape, _), v) in cfg.params().into_iter().zip(vals) {
            vb.get_with_hints(shape.clone(), name, candle_nn::Init::Const(0.))?;
            varmap.data().lock().unwrap()[name].set(&Tensor::from_vec(v, shape, dev)?)?;
        }
        let cnn = Cnn::from_varmap(cfg, &varmap)?;
        Ok((varmap, cnn))
    }

    /// The CNN over the variables of `varmap` (gradients flow into them).
    pub fn from_varmap(cfg: &CnnConfig, varmap: &VarMap) -> Result<Cnn> {
        crate::kernels::tune_allocator();
        let data = varmap.data().lock().unwrap();
        let w = cfg
            .params()
            .iter()
            .map(|(name, shape, _)| {
                let v = data
                    .get(*name)
                    .with_context(|| format!("CNN var {name} missing"))?;
                if v.dims() != shape.as_slice() {
                    bail!(
                        "CNN var {name} has shape {:?}, expected {shape:?}",
                        v.dims()
                    );
                }
                Ok(v.as_tensor().clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cnn {
            config: cfg.clone(),
            w,
        })
    }

    /// A frozen copy (plain tensors: no gradient flows into them).
    pub fn frozen(&self) -> Cnn {
        Cnn {
            config: self.config.clone(),
            w: self.w.iter().map(|t| t.detach()).collect(),
        }
    }

    /// Features `[N, hidden]` and logits `[N, classes]` of images `[N, C, S, S]`. With a
    /// dropout RNG the network is in training mode (dropout masks drawn from it).
    pub fn forward(
        &self,
        x: &Tensor,
        dropout: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        check_image_batch(x, c.in_channels, c.image_size, "CNN expects images")?;
        let dims = x.dims();
        // NHWC inside; parameters keep PyTorch's layouts
        let nhwc = if c.in_channels == 1 {
            x.reshape((dims[0], dims[2], dims[3], 1))?
        } else {
            x.permute((0, 2, 3, 1))?.contiguous()?
        };
        let n = dims[0];
        let fast = crate::kernels::enabled(x.device(), x.dtype());
        let f = if fast {
            // fused CPU kernels (src/kernels/conv.rs; EQUIRUN_FAST=0 turns them off): conv + bias
            // + max-pool + ReLU per block, the second block writing (C, H, W) order, as fc1's
            // columns expect
            let h = conv_block(&nhwc, &self.w[0], &self.w[1], false)?;
            let h = conv_block(&h, &self.w[2], &self.w[3], true)?;
            linear(&h.reshape((n, c.flat()))?, &self.w[4], &self.w[5], true)?
        } else {
            // relu(max-pool(x)) = max-pool(relu(x)), on a quarter of the elements
            let h = max_pool2(&conv3x3(&nhwc, &self.w[0], &self.w[1])?)?.relu()?;
            let h = max_pool2(&conv3x3(&h, &self.w[2], &self.w[3])?)?.relu()?;
            let (n, s, _, ch) = h.dims4()?;
            let h = h.reshape((n, s * s * ch))?;
            // fc1 is stored for a (C, H, W) flatten, as in PyTorch; reorder its columns
            let w1 = self.w[4]
                .reshape((c.hidden, ch, s, s))?
                .permute((0, 2, 3, 1))?
                .reshape((c.hidden, s * s * ch))?;
            h.matmul(&w1.t()?)?.broadcast_add(&self.w[5])?.relu()?
        };
        let d = match dropout {
            Some(rng) if c.dropout > 0.0 => {
                f.broadcast_mul(&dropout_mask(f.dims(), c.dropout, rng, f.device())?)?
            }
            _ => f.clone(),
        };
        let logits = if fast {
            linear(&d, &self.w[6], &self.w[7], false)?
        } else {
            d.matmul(&self.w[6].t()?)?.broadcast_add(&self.w[7])?
        };
        Ok((f, logits))
    }

    /// Logits only.
    pub fn logits(
        &self,
        x: &Tensor,
        dropout: Option<&RefCell<rand_chacha::ChaCha8Rng>>,
    ) -> Result<Tensor> {
        Ok(self.forward(x, dropout)?.1)
    }
}

/// A 3×3 convolution with padding 1 and stride 1 on NHWC input, weights `[Co, Ci, 3, 3]`.
/// Fails unless `x` is a batch of square images `[N, channels, size, size]`; `what` begins the
/// message ("CNN expects images").
pub fn check_image_batch(x: &Tensor, channels: usize, size: usize, what: &str) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != channels || dims[2] != size || dims[3] != size {
        bail!("{what} [N, {channels}, {size}, {size}], got {dims:?}");
    }
    Ok(())
}

pub fn conv3x3(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, h, wd, ci) = x.dims4()?;
    let co = w.dim(0)?;
    if w.dims() != [co, ci, 3, 3] {
        bail!(
            "conv3x3: weight {:?} does not fit {ci} input channels",
            w.dims()
        );
    }
    // a trailing column of ones carries the bias through the matmul
    if !x.device().is_cpu() {
        // the im2col op is CPU-only; elsewhere candle's conv2d does the same
        return conv3x3_candle(x, w, b);
    }
    let cols = x.contiguous()?.apply_op1(Im2Col3x3)?; // [N·H·W, 9·Ci + 1]
    let wm = Tensor::cat(
        &[
            w.permute((0, 2, 3, 1))?.reshape((co, 9 * ci))?,
            b.reshape((co, 1))?,
        ],
        1,
    )?;
    let y = cols.matmul(&wm.t()?)?;
    Ok(y.reshape((n, h, wd, co))?)
}

/// [`conv3x3`] through candle's conv2d (NCHW inside), for devices other than the CPU.
pub(crate) fn conv3x3_candle(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let co = w.dim(0)?;
    let y = x
        .permute((0, 3, 1, 2))?
        .contiguous()?
        .conv2d(&w.contiguous()?, 1, 1, 1, 1)?
        .broadcast_add(&b.reshape((1, co, 1, 1))?)?;
    Ok(y.permute((0, 2, 3, 1))?.contiguous()?)
}

/// [`max_pool2`] as two max reductions over a `[N, H/2, 2, W/2, 2, C]` view, for devices other
/// than the CPU. (Not candle's `max_pool2d`: its backward pass scales the gradient of a unique
/// maximum by 1/4, candle-core 0.11.)
pub(crate) fn max_pool2_candle(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        bail!("2×2 max-pool needs even sides, got {h}×{w}");
    }
    Ok(x.contiguous()?
        .reshape((n, h / 2, 2, w / 2, 2, c))?
        .max(4)?
        .max(2)?)
}

/// 2×2 max-pooling with stride 2 on NHWC input (first maximum gets the gradient).
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return max_pool2_candle(x); // the fused op is CPU-only
    }
    Ok(x.contiguous()?.apply_op1(MaxPool2Nhwc)?)
}

fn nhwc(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// im2col for 3×3 kernels, padding 1: `[N, H, W, C]` → `[N·H·W, 9·C + 1]`, columns
/// `(ky, kx, c)` then a constant 1 (for the bias).
struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "equirun-im2col3x3"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::fused::slice(s, l)?;
        let (n, h, w, c) = nhwc(l)?;
        let row = 9 * c + 1;
        let mut out = vec![0f32; n * h * w * row];
        crate::kernels::conv::im2col(x, n, h, w, c, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n * h * w, row))))
    }
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * h * w * c];
        crate::kernels::conv::col2im(&g, 9 * c + 1, n, h, w, c, &mut out);
        Ok(Some(Tensor::from_vec(out, (n, h, w, c), arg.device())?))
    }
}

/// 2×2 / stride 2 max-pool on NHWC (H and W even).
struct MaxPool2Nhwc;

impl MaxPool2Nhwc {
    /// Visits every output element with its value and the flat input index of its (first)
    /// maximum; channels are the inner, contiguous loop.
    fn visit(x: &[f32], n: usize, h: usize, w: usize, c: usize, mut f: impl FnMut(usize, f32)) {
        let (h2, w2) = (h / 2, w / 2);
        for b in 0..n {
            for i in 0..h2 {
                for j in 0..w2 {
                    let r0 = ((b * h + 2 * i) * w + 2 * j) * c;
                    let r1 = r0 + w * c;
                    let (a, bb) = (&x[r0..r0 + 2 * c], &x[r1..r1 + 2 * c]);
                    for ch in 0..c {
                        let (mut best, mut v) = (r0 + ch, a[ch]);
                        if a[c + ch] > v {
                            best = r0 + c + ch;
                            v = a[c + ch];
                        }
                        if bb[ch] > v {
                            best = r1 + ch;
                            v = bb[ch];
                        }
                        if bb[c + ch] > v {
                            best = r1 + c + ch;
                            v = bb[c + ch];
                        }
                        f(best, v);
                    }
                }
            }
        }
    }
}

impl CustomOp1 for MaxPool2Nhwc {
    fn name(&self) -> &'static str {
        "equirun-maxpool2-nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::fused::slice(s, l)?;
        let (n, h, w, c) = nhwc(l)?;
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("2×2 max-pool needs even sides, got {h}×{w}");
        }
        let mut out = Vec::with_capacity(x.len() / 4);
        Self::visit(x, n, h, w, c, |_, v| out.push(v));
        Ok((CpuStorage::F32(out), Shape::from((n, h / 2, w / 2, c))))
    }
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, h, w, c) = arg.dims4()?;
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; x.len()];
        let mut k = 0;
        Self::visit(&x, n, h, w, c, |i, _| {
            out[i] += g[k];
            k += 1;
        });
        Ok(Some(Tensor::from_vec(out, (n, h, w, c), arg.device())?))
    }
}

/// `relu(max_pool2(conv3x3(x) + b))` on the CPU as one op with a hand-written backward pass
/// ([`crate::kernels::conv`]): `x` NHWC `[N, H, W, Ci]`, `w` `[Co, Ci, 3, 3]`, `b` `[Co]`;
/// output NHWC `[N, H/2, W/2, Co]`, or NCHW `[N, Co, H/2, W/2]` with `nchw`.
pub fn conv_block(x: &Tensor, w: &Tensor, b: &Tensor, nchw: bool) -> Result<Tensor> {
    let (_, h, wd, ci) = x.dims4()?;
    let co = w.dim(0)?;
    if w.dims() != [co, ci, 3, 3] || b.dims() != [co] {
        bail!(
            "conv block: weight {:?} / bias {:?} do not fit {ci} input channels",
            w.dims(),
            b.dims()
        );
    }
    if h % 2 != 0 || wd % 2 != 0 {
        bail!("2×2 max-pool needs even sides, got {h}×{wd}");
    }
    let save = x.track_op() || w.track_op() || b.track_op();
    let op = ConvBlockOp {
        nchw,
        save,
        state: std::sync::Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op3_arc(
        &w.contiguous()?,
        &b.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )?)
}

/// `x·Wᵀ + b` (then ReLU with `relu`) on the CPU as one op: `x` `[N, Din]`, `w` `[Dout, Din]`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let (_, din) = x.dims2()?;
    let dout = w.dim(0)?;
    if w.dims() != [dout, din] || b.dims() != [dout] {
        bail!(
            "linear: weight {:?} / bias {:?} do not fit {din} inputs",
            w.dims(),
            b.dims()
        );
    }
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { relu })?)
}

/// Runs `f` on a CPU tensor's contiguous f32 data without copying it.
fn with_data<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(super::fused::slice(cpu, layout)?),
        _ => candle_core::bail!("the fused CNN ops run on the CPU only"),
    }
}

struct ConvBlockOp {
    nchw: bool,
    save: bool,
    /// The block's shape, packed weights and what the backward pass needs (set by the forward).
    state: std::sync::Mutex<Option<(ConvShape, Vec<f32>, ConvSaved)>>,
}

use crate::kernels::conv::{self as kconv, ConvSaved, ConvShape};

impl CustomOp3 for ConvBlockOp {
    fn name(&self) -> &'static str {
        "equirun-conv3x3-pool-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            super::fused::slice(s1, l1)?,
            super::fused::slice(s2, l2)?,
            super::fused::slice(s3, l3)?,
        );
        let (n, h, wd, ci) = l1.shape().dims4()?;
        let co = l2.shape().dims()[0];
        let s = ConvShape {
            n,
            h,
            w: wd,
            ci,
            co,
        };
        let wm = kconv::pack_weights(&s, w, b);
        let (y, saved) = kconv::conv_block_fwd(&s, x, &wm, self.nchw, self.save);
        if let Some(saved) = saved {
            *self.state.lock().unwrap() = Some((s, wm, saved));
        }
        let shape = if self.nchw {
            Shape::from((n, co, h / 2, wd / 2))
        } else {
            Shape::from((n, h / 2, wd / 2, co))
        };
        Ok((CpuStorage::F32(y), shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let state = self.state.lock().unwrap();
        let Some((s, wm, saved)) = state.as_ref() else {
            candle_core::bail!("conv block: backward pass without a saved forward pass");
        };
        let need_dx = x.track_op();
        let (dwm, dx) = with_data(x, |xs| {
            with_data(grad, |g| {
                with_data(res, |y| {
                    Ok(kconv::conv_block_bwd(
                        s, xs, saved, wm, g, y, self.nchw, need_dx,
                    ))
                })
            })
        })?;
        let (dw, db) = kconv::unpack_weights(s, &dwm);
        let dev = x.device();
        let dx = dx
            .map(|d| Tensor::from_vec(d, (s.n, s.h, s.w, s.ci), dev))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dw, (s.co, s.ci, 3, 3), dev)?),
            Some(Tensor::from_vec(db, s.co, dev)?),
        ))
    }
}

struct LinearOp {
    relu: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "equirun-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            super::fused::slice(s1, l1)?,
            super::fused::slice(s2, l2)?,
            super::fused::slice(s3, l3)?,
        );
        let (n, din) = l1.shape().dims2()?;
        let y = kconv::linear_fwd(x, n, din, w, b, self.relu);
        Ok((CpuStorage::F32(y), Shape::from((n, b.len()))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, din) = x.dims2()?;
        let dout = w.dim(0)?;
        let need_dx = x.track_op();
        let (dw, db, dx) = with_data(x, |xs| {
            with_data(w, |ws| {
                with_data(grad, |g| {
                    with_data(res, |y| {
                        Ok(kconv::linear_bwd(
                            xs, n, din, ws, dout, g, y, self.relu, need_dx,
                        ))
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            dx.map(|d| Tensor::from_vec(d, (n, din), dev)).transpose()?,
            Some(Tensor::from_vec(dw, (dout, din), dev)?),
            Some(Tensor::from_vec(db, dout, dev)?),
        ))
    }
}

/// The trainable variables of a CNN VarMap in [`CnnConfig::params`] order.
pub fn vars(cfg: &CnnConfig, varmap: &VarMap) -> Result<Vec<Var>> {
    let data = varmap.data().lock().unwrap();
    cfg.params()
        .iter()
        .map(|(n, _, _)| {
            data.get(*n)
                .cloned()
                .with_context(|| format!("CNN var {n} missing"))
        })
        .collect()
}

/// Loads a CNN checkpoint (safetensors) into the variables of `varmap`, checking shapes.
pub fn load_into(cfg: &CnnConfig, varmap: &VarMap, path: &Path) -> Result<()> {
    let st = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading CNN checkpoint {}", path.display()))?;
    let data = varmap.data().lock().unwrap();
    for (name, shape, _) in cfg.params() {
        let t = st.get(name).with_context(|| {
            format!(
                "CNN checkpoint {} lacks tensor {name}; delete it to retrain",
                path.display()
            )
        })?;
        if t.dims() != shape.as_slice() {
            bail!(
                "CNN checkpoint {}: {name} has shape {:?}, the model expects {shape:?} (another architecture?)",
                path.display(),
                t.dims()
            );
        }
        data[name].set(&t.to_dtype(DType::F32)?.to_device(data[name].device())?)?;
    }
    Ok(())
}

/// Saves the CNN variables atomically (temp file beside the target, then rename).
pub fn save(varmap: &VarMap, path: &Path) -> Result<()> {
    crate::output::save_varmap_atomic(varmap, path)
}

/// Keeps freed tensor buffers in the process instead of returning them to the OS.
///
/// glibc serves allocations above 128 KiB with fresh `mmap`s and unmaps them on free, so every
/// training step page-faults its activations and gradients in again (measured: about a third
/// of the CNN's training time in the kernel). Raising the mmap and trim thresholds makes the
/// allocator reuse that memory (CNN training 770 → 1,110 images/s on this CPU). No effect
/// on results; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

#[cfg(test)]
mod device_fallback_tests {
    use super::*;
    use crate::testing::{max_abs_diff, randn};
    use candle_core::Var;

    /// candle's conv2d and max_pool2d (what runs off the CPU) give the CPU ops' values and
    /// weight gradients.
    #[test]
    fn candle_conv_and_pool_match_the_cpu_ops() {
        let x = randn(1, &[2, 6, 6, 3]);
        let w = Var::from_tensor(&randn(2, &[4, 3, 3, 3])).unwrap();
        let b = Var::from_tensor(&randn(3, &[4])).unwrap();
        let wsum = randn(4, &[2, 3, 3, 4]);
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>,
                   pool: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let y = pool(&f(&x).unwrap()).unwrap();
            let g = (&y * &wsum).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(&w).unwrap().clone(), g.get(&b).unwrap().clone())
        };
        let (y1, gw1, gb1) = run(&|x| conv3x3(x, &w, &b), &max_pool2);
        let (y2, gw2, gb2) = run(&|x| conv3x3_candle(x, &w, &b), &max_pool2_candle);
        let wsum6 = randn(5, &[2, 6, 6, 4]);
        let conv_only = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let y = f(&x).unwrap();
            let g = (&y * &wsum6)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(&w).unwrap().clone()
        };
        let c1 = conv_only(&|x| conv3x3(x, &w, &b));
        let c2 = conv_only(&|x| conv3x3_candle(x, &w, &b));
        assert!(max_abs_diff(&c1, &c2) < 1e-4);
        assert!(max_abs_diff(&y1, &y2) < 1e-5);
        assert!(max_abs_diff(&gw1, &gw2) < 1e-4);
        assert!(max_abs_diff(&gb1, &gb2) < 1e-4);
    }
}
