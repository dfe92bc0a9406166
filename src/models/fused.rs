//! Fused recurrent cells as candle custom ops with hand-written backward passes.
//!
//! A GRU or LSTM step written with elementary tensor ops costs ~15 graph nodes forward and
//! as many backward; at batch 1 (the official SCAN recipe) per-op overhead dominates, so the
//! cells are fused into one node each. Both are checked against the op-by-op formulas (values
//! and gradients) in the tests below.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// The contiguous f32 data of a custom op's input.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("custom op needs contiguous inputs"),
    }
}

/// One GRU step (see [`GruCell`]): the fused op on the CPU, the same formula op by op (candle's
/// autograd) on other devices, where the hand-written CPU op does not run.
pub fn gru_cell(xw: &Tensor, hw: &Tensor, h: &Tensor) -> Result<Tensor> {
    if xw.device().is_cpu() {
        return xw
            .contiguous()?
            .apply_op3(&hw.contiguous()?, &h.contiguous()?, GruCell);
    }
    gru_cell_ops(xw, hw, h)
}

/// [`gru_cell`] op by op (any device).
pub(crate) fn gru_cell_ops(xw: &Tensor, hw: &Tensor, h: &Tensor) -> Result<Tensor> {
    let hs = h.dim(1)?;
    let s = candle_nn::ops::sigmoid;
    let r = s(&(xw.narrow(1, 0, hs)? + hw.narrow(1, 0, hs)?)?)?;
    let z = s(&(xw.narrow(1, hs, hs)? + hw.narrow(1, hs, hs)?)?)?;
    let n = (xw.narrow(1, 2 * hs, hs)? + (&r * hw.narrow(1, 2 * hs, hs)?)?)?.tanh()?;
    &n + (&z * (h - &n)?)?
}

/// One LSTM step (see [`LstmCell`]): `[h' | c']` from the gate pre-activations and the cell
/// state; fused on the CPU, op by op elsewhere.
pub fn lstm_cell(g: &Tensor, c: &Tensor) -> Result<Tensor> {
    if g.device().is_cpu() {
        return g.contiguous()?.apply_op2(&c.contiguous()?, LstmCell);
    }
    lstm_cell_ops(g, c)
}

/// [`lstm_cell`] op by op (any device).
pub(crate) fn lstm_cell_ops(g: &Tensor, c: &Tensor) -> Result<Tensor> {
    let hs = c.dim(1)?;
    let s = candle_nn::ops::sigmoid;
    let i = s(&g.narrow(1, 0, hs)?)?;
    let f = s(&g.narrow(1, hs, hs)?)?;
    let cand = g.narrow(1, 2 * hs, hs)?.tanh()?;
    let o = s(&g.narrow(1, 3 * hs, hs)?)?;
    let c2 = ((f * c)? + (i * cand)?)?;
    let h2 = (o * c2.tanh()?)?;
    Tensor::cat(&[h2, c2], 1)
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// PyTorch GRU step: inputs `xw = x·W_ihᵀ + b_ih` `[N,3H]`, `hw = h·W_hhᵀ + b_hh` `[N,3H]`,
/// `h` `[N,H]` → `h'` `[N,H]` (gate order r, z, n).
pub struct GruCell;

impl CustomOp3 for GruCell {
    fn name(&self) -> &'static str {
        "equirun-gru-cell"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xw, hw, h) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, hs) = l3.shape().dims2()?;
        if xw.len() != n * 3 * hs || hw.len() != n * 3 * hs {
            bail!("gru cell: shape mismatch");
        }
        let mut out = vec![0f32; n * hs];
        for b in 0..n {
            let (x, w) = (&xw[b * 3 * hs..], &hw[b * 3 * hs..]);
            for j in 0..hs {
                let r = sigmoid(x[j] + w[j]);
                let z = sigmoid(x[hs + j] + w[hs + j]);
                let nn = (x[2 * hs + j] + r * w[2 * hs + j]).tanh();
                out[b * hs + j] = nn + z * (h[b * hs + j] - nn);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, hs))))
    }
    fn bwd(
        &self,
        xw: &Tensor,
        hw: &Tensor,
        h: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, hs) = h.dims2()?;
        let xv = xw.flatten_all()?.to_vec1::<f32>()?;
        let wv = hw.flatten_all()?.to_vec1::<f32>()?;
        let hv = h.flatten_all()?.to_vec1::<f32>()?;
        let gv = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; n * 3 * hs];
        let mut dw = vec![0f32; n * 3 * hs];
        let mut dh = vec![0f32; n * hs];
        for b in 0..n {
            let o3 = b * 3 * hs;
            for j in 0..hs {
                let (x, w) = (&xv[o3..], &wv[o3..]);
                let r = sigmoid(x[j] + w[j]);
                let z = sigmoid(x[hs + j] + w[hs + j]);
                let nn = (x[2 * hs + j] + r * w[2 * hs + j]).tanh();
                let g = gv[b * hs + j];
                let hp = hv[b * hs + j];
                let dn = g * (1.0 - z) * (1.0 - nn * nn);
                let dz = g * (hp - nn) * z * (1.0 - z);
                let dr = dn * w[2 * hs + j] * r * (1.0 - r);
                dx[o3 + j] = dr;
                dx[o3 + hs + j] = dz;
                dx[o3 + 2 * hs + j] = dn;
                dw[o3 + j] = dr;
                dw[o3 + hs + j] = dz;
                dw[o3 + 2 * hs + j] = dn * r;
                dh[b * hs + j] = g * z;
            }
        }
        let dev = h.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, 3 * hs), dev)?),
            Some(Tensor::from_vec(dw, (n, 3 * hs), dev)?),
            Some(Tensor::from_vec(dh, (n, hs), dev)?),
        ))
    }
}

/// PyTorch LSTM step: `g = x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh` `[N,4H]` (gates i, f, g, o) and
/// `c` `[N,H]` → `[h' | c']` `[N,2H]`.
pub struct LstmCell;

impl CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "equirun-lstm-cell"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, c) = (slice(s1, l1)?, slice(s2, l2)?);
        let (n, hs) = l2.shape().dims2()?;
        if g.len() != n * 4 * hs {
            bail!("lstm cell: shape mismatch");
        }
        let mut out = vec![0f32; n * 2 * hs];
        for b in 0..n {
            let gg = &g[b * 4 * hs..];
            for j in 0..hs {
                let i = sigmoid(gg[j]);
                let f = sigmoid(gg[hs + j]);
                let cand = gg[2 * hs + j].tanh();
                let o = sigmoid(gg[3 * hs + j]);
                let c2 = f * c[b * hs + j] + i * cand;
                out[b * 2 * hs + j] = o * c2.tanh();
                out[b * 2 * hs + hs + j] = c2;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 2 * hs))))
    }
    fn bwd(
        &self,
        g: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, hs) = c.dims2()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        let cv = c.flatten_all()?.to_vec1::<f32>()?;
        let rv = res.flatten_all()?.to_vec1::<f32>()?;
        let dv = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut dg = vec![0f32; n * 4 * hs];
        let mut dc = vec![0f32; n * hs];
        for b in 0..n {
            let gg = &gv[b * 4 * hs..];
            for j in 0..hs {
                let i = sigmoid(gg[j]);
                let f = sigmoid(gg[hs + j]);
                let cand = gg[2 * hs + j].tanh();
                let o = sigmoid(gg[3 * hs + j]);
                let c2 = rv[b * 2 * hs + hs + j];
                let tc = c2.tanh();
                let dh = dv[b * 2 * hs + j];
                let dc2 = dv[b * 2 * hs + hs + j] + dh * o * (1.0 - tc * tc);
                let o4 = b * 4 * hs;
                dg[o4 + j] = dc2 * cand * i * (1.0 - i);
                dg[o4 + hs + j] = dc2 * cv[b * hs + j] * f * (1.0 - f);
                dg[o4 + 2 * hs + j] = dc2 * i * (1.0 - cand * cand);
                dg[o4 + 3 * hs + j] = dh * tc * o * (1.0 - o);
                dc[b * hs + j] = dc2 * f;
            }
        }
        let dev = c.device();
        Ok((
            Some(Tensor::from_vec(dg, (n, 4 * hs), dev)?),
            Some(Tensor::from_vec(dc, (n, hs), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use crate::testing::{max_abs_diff as close, randn};

    /// The op-by-op cells (what runs off the CPU) give the fused cells' values.
    #[test]
    fn op_by_op_cells_match_the_fused_cells() {
        let (n, hs) = (3, 5);
        let (xw, hw, h) = (
            randn(11, &[n, 3 * hs]),
            randn(12, &[n, 3 * hs]),
            randn(13, &[n, hs]),
        );
        let d = close(
            &gru_cell(&xw, &hw, &h).unwrap(),
            &gru_cell_ops(&xw, &hw, &h).unwrap(),
        );
        assert!(d < 1e-6, "gru {d}");
        let (g, c) = (randn(14, &[n, 4 * hs]), randn(15, &[n, hs]));
        let d = close(&lstm_cell(&g, &c).unwrap(), &lstm_cell_ops(&g, &c).unwrap());
        assert!(d < 1e-6, "lstm {d}");
    }

    #[test]
    fn gru_cell_matches_reference_values_and_gradients() {
        let (n, hs) = (3, 5);
        let xw = Var::from_tensor(&randn(1, &[n, 3 * hs])).unwrap();
        let hw = Var::from_tensor(&randn(2, &[n, 3 * hs])).unwrap();
        let h = Var::from_tensor(&randn(3, &[n, hs])).unwrap();
        let wsum = randn(4, &[n, hs]);
        let fused = xw
            .as_tensor()
            .apply_op3(hw.as_tensor(), h.as_tensor(), GruCell)
            .unwrap();
        let s = candle_nn::ops::sigmoid;
        let r = s(&(xw.narrow(1, 0, hs).unwrap() + hw.narrow(1, 0, hs).unwrap()).unwrap()).unwrap();
        let z =
            s(&(xw.narrow(1, hs, hs).unwrap() + hw.narrow(1, hs, hs).unwrap()).unwrap()).unwrap();
        let nn = (xw.narrow(1, 2 * hs, hs).unwrap()
            + (&r * hw.narrow(1, 2 * hs, hs).unwrap()).unwrap())
        .unwrap()
        .tanh()
        .unwrap();
        let reference = (&nn + (&z * (h.as_tensor() - &nn).unwrap()).unwrap()).unwrap();
        assert!(close(&fused, &reference) < 1e-6);
        let gf = (fused * &wsum)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (reference * &wsum)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&xw, &hw, &h] {
            let d = close(
                gf.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }

    #[test]
    fn lstm_cell_matches_reference_values_and_gradients() {
        let (n, hs) = (2, 4);
        let g = Var::from_tensor(&randn(5, &[n, 4 * hs])).unwrap();
        let c = Var::from_tensor(&randn(6, &[n, hs])).unwrap();
        let wsum = randn(7, &[n, 2 * hs]);
        let fused = g.as_tensor().apply_op2(c.as_tensor(), LstmCell).unwrap();
        let s = candle_nn::ops::sigmoid;
        let i = s(&g.narrow(1, 0, hs).unwrap()).unwrap();
        let f = s(&g.narrow(1, hs, hs).unwrap()).unwrap();
        let cand = g.narrow(1, 2 * hs, hs).unwrap().tanh().unwrap();
        let o = s(&g.narrow(1, 3 * hs, hs).unwrap()).unwrap();
        let c2 = ((f * c.as_tensor()).unwrap() + (i * cand).unwrap()).unwrap();
        let h2 = (o * c2.tanh().unwrap()).unwrap();
        let reference = Tensor::cat(&[h2, c2], 1).unwrap();
        assert!(close(&fused, &reference) < 1e-6);
        let gf = (fused * &wsum)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (reference * &wsum)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&g, &c] {
            let d = close(
                gf.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }
}
