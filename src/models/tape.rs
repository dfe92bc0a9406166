//! A weight-gradient tape for recurrent loops.
//!
//! In a recurrent loop the same weight is used at every step. Through plain autograd every use
//! allocates a fresh weight-sized gradient and adds it into the running sum, which dominates
//! the cost of the official batch-1 SCAN recipe. [`Tape::linear`] computes `x·Wᵀ` as one
//! custom op whose backward pass returns the input gradient as usual but accumulates the
//! weight gradient in place into a buffer owned by the tape; [`Tape::add_into`] then adds
//! the buffers to the [`GradStore`] once per step of the optimiser.

use candle_core::{
    backprop::GradStore, bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, TensorId,
};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Tape {
    slots: Mutex<Vec<(Tensor, Vec<f32>)>>,
}

struct TapedLinear {
    tape: Arc<Tape>,
    slot: usize,
}

use super::fused::slice;

/// Dot product with 8 independent accumulators (vectorises).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let x: &[f32; 8] = x.try_into().unwrap();
        let y: &[f32; 8] = y.try_into().unwrap();
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Runs `f` on the contiguous f32 data of a tensor without copying it.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(slice(cpu, layout)?),
        _ => bail!("taped linear runs on the CPU only"),
    }
}

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

impl CustomOp2 for TapedLinear {
    fn name(&self) -> &'static str {
        "equirun-taped-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("taped linear: x is [{n},{k}] but W is [{m},{k2}]");
        }
        let mut out = vec![0f32; n * m];
        for b in 0..n {
            let xr = &x[b * k..(b + 1) * k];
            for j in 0..m {
                out[b * m + j] = dot(xr, &w[j * k..(j + 1) * k]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, m))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let (m, _) = w.dims2()?;
        let grad = grad.contiguous()?;
        let mut dx = vec![0f32; n * k];
        with_data(x, |xv| {
            with_data(w, |wv| {
                with_data(&grad, |gv| {
                    let mut slots = self.tape.slots.lock().unwrap();
                    let buf = &mut slots[self.slot].1;
                    for b in 0..n {
                        let xr = &xv[b * k..(b + 1) * k];
                        for j in 0..m {
                            let g = gv[b * m + j];
                            if g != 0.0 {
                                axpy(g, &wv[j * k..(j + 1) * k], &mut dx[b * k..(b + 1) * k]);
                                axpy(g, xr, &mut buf[j * k..(j + 1) * k]);
                            }
                        }
                    }
                    Ok(())
                })
            })
        })?;
        Ok((Some(Tensor::from_vec(dx, (n, k), x.device())?), None))
    }
}

impl Tape {
    pub fn new() -> Arc<Tape> {
        Arc::new(Tape::default())
    }

    fn slot(&self, w: &Tensor) -> usize {
        let mut slots = self.slots.lock().unwrap();
        let id: TensorId = w.id();
        if let Some(i) = slots.iter().position(|(t, _)| t.id() == id) {
            return i;
        }
        slots.push((w.clone(), vec![0f32; w.elem_count()]));
        slots.len() - 1
    }

    /// `x · wᵀ` for `x` `[N, K]` and a weight `w` `[M, K]` (PyTorch layout); the gradient with
    /// respect to `w` is accumulated on the tape.
    pub fn linear(self: &Arc<Self>, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let slot = self.slot(w);
        x.contiguous()?.apply_op2(
            &w.detach(),
            TapedLinear {
                tape: self.clone(),
                slot,
            },
        )
    }

    /// Adds the accumulated weight gradients into `grads` and clears the tape.
    pub fn add_into(&self, grads: &mut GradStore) -> Result<()> {
        let mut slots = self.slots.lock().unwrap();
        for (w, buf) in slots.iter_mut() {
            let t = Tensor::from_vec(std::mem::take(buf), w.shape(), w.device())?;
            let total = match grads.remove(w) {
                Some(g) => (g + t)?,
                None => t,
            };
            grads.insert(w, total);
        }
        slots.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn taped_linear_matches_autograd() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 35., &dev)
                .unwrap()
                .reshape((5, 7))
                .unwrap()
                .affine(0.1, -1.0)
                .unwrap(),
        )
        .unwrap();
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 21., &dev)
                .unwrap()
                .reshape((3, 7))
                .unwrap()
                .cos()
                .unwrap(),
        )
        .unwrap();
        let tape = Tape::new();
        // the weight used twice in a little recurrence
        let h1 = tape
            .linear(x.as_tensor(), w.as_tensor())
            .unwrap()
            .tanh()
            .unwrap();
        let h2 = tape
            .linear(&h1.matmul(w.as_tensor()).unwrap(), w.as_tensor())
            .unwrap();
        let mut g = h2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        tape.add_into(&mut g).unwrap();
        let r1 = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .tanh()
            .unwrap();
        let r2 = r1
            .matmul(w.as_tensor())
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap();
        let gr = r2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let d = crate::testing::max_abs_diff;
        assert!(d(&h2, &r2) < 1e-4);
        let scale = crate::testing::max_abs(gr.get(w.as_tensor()).unwrap());
        assert!(
            d(
                g.get(w.as_tensor()).unwrap(),
                gr.get(w.as_tensor()).unwrap()
            ) <= 1e-5 * scale.max(1.0),
            "weight gradient"
        );
        let xs = crate::testing::max_abs(gr.get(x.as_tensor()).unwrap());
        let dx = d(
            g.get(x.as_tensor()).unwrap(),
            gr.get(x.as_tensor()).unwrap(),
        );
        assert!(
            dx <= 1e-5 * xs.max(1.0),
            "input gradient differs by {dx} (scale {xs})"
        );
    }
}
