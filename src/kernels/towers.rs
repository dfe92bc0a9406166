//! The models around [`super::encoder::Encoder`]: HF CLIP's vision and text towers and a BERT
//! encoder, each built from the same `VarBuilder` (same tensors) as candle-transformers' model,
//! with the same outputs.

use super::cpu::{self, Act, KeyMask};
use super::encoder::{
    layer_norm_params, slices, Encoder, EncoderSpec, Params, BERT_NAMES, CLIP_NAMES,
};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::ClipConfig;

/// HF `CLIPVisionTransformer` + `visual_projection`.
pub struct ClipVision {
    p: Params,
    enc: Encoder,
    patch_w: usize,
    class: usize,
    pos: usize,
    pre: (usize, usize),
    post: (usize, usize),
    proj: usize,
    d: usize,
    proj_dim: usize,
    image: usize,
    patch: usize,
    chans: usize,
}

/// HF `CLIPTextTransformer` + `text_projection`.
pub struct ClipText {
    p: Params,
    enc: Encoder,
    tok: usize,
    pos: usize,
    fin: (usize, usize),
    proj: usize,
    d: usize,
    proj_dim: usize,
    max_pos: usize,
    vocab: usize,
}

/// Both towers.
pub struct FastClip {
    pub vision: ClipVision,
    pub text: ClipText,
}

impl FastClip {
    /// From an HF `CLIPModel` VarBuilder (`vision_model.…`, `text_model.…`, projections).
    pub fn load(vb: &VarBuilder, c: &ClipConfig) -> Result<FastClip> {
        let v = &c.vision_config;
        let t = &c.text_config;
        let mut p = Params::default();
        let vv = vb.pp("vision_model");
        let d = v.embed_dim;
        let np = (v.image_size / v.patch_size).pow(2);
        let patch_w = p.push(
            vv.get(
                (d, v.num_channels, v.patch_size, v.patch_size),
                "embeddings.patch_embedding.weight",
            )?
            .reshape((d, v.num_channels * v.patch_size * v.patch_size))?,
        )?;
        let class = p.get(&vv, d, "embeddings.class_embedding")?;
        let pos = p.get(&vv, (np + 1, d), "embeddings.position_embedding.weight")?;
        let pre = layer_norm_params(&mut p, &vv.pp("pre_layrnorm"), d)?;
        let spec = EncoderSpec {
            d,
            heads: v.num_attention_heads,
            ff: v.intermediate_size,
            layers: v.num_hidden_layers,
            eps: 1e-5,
            act: Act::QuickGelu,
            pre_ln: true,
        };
        let enc = Encoder::load(&mut p, vv.pp("encoder.layers"), spec, &CLIP_NAMES)?;
        let post = layer_norm_params(&mut p, &vv.pp("post_layernorm"), d)?;
        let proj = p.get(vb, (v.projection_dim, d), "visual_projection.weight")?;
        let vision = ClipVision {
            p,
            enc,
            patch_w,
            class,
            pos,
            pre,
            post,
            proj,
            d,
            proj_dim: v.projection_dim,
            image: v.image_size,
            patch: v.patch_size,
            chans: v.num_channels,
        };

        let mut p = Params::default();
        let tv = vb.pp("text_model");
        let d = t.embed_dim;
        let tok = p.get(&tv, (t.vocab_size, d), "embeddings.token_embedding.weight")?;
        let pos = p.get(
            &tv,
            (t.max_position_embeddings, d),
            "embeddings.position_embedding.weight",
        )?;
        let spec = EncoderSpec {
            d,
            heads: t.num_attention_heads,
            ff: t.intermediate_size,
            layers: t.num_hidden_layers,
            eps: 1e-5,
            act: Act::QuickGelu,
            pre_ln: true,
        };
        let enc = Encoder::load(&mut p, tv.pp("encoder.layers"), spec, &CLIP_NAMES)?;
        let fin = layer_norm_params(&mut p, &tv.pp("final_layer_norm"), d)?;
        let proj = p.get(vb, (t.projection_dim, d), "text_projection.weight")?;
        let text = ClipText {
            p,
            enc,
            tok,
            pos,
            fin,
            proj,
            d,
            proj_dim: t.projection_dim,
            max_pos: t.max_position_embeddings,
            vocab: t.vocab_size,
        };
        Ok(FastClip { vision, text })
    }
}

impl ClipVision {
    /// Image features `[B, projection_dim]` of pixels `[B, C, S, S]` (f32, CPU).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = pixels.dims4()?;
        if c != self.chans || hh != self.image || ww != self.image {
            candle_core::bail!(
                "expected pixels [B, {}, {}, {}], got {:?}",
                self.chans,
                self.image,
                self.image,
                pixels.dims()
            );
        }
        let px = pixels
            .to_dtype(DType::F32)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let g = self.p.lock();
        let w = slices(&g)?;
        let (d, ps, s) = (self.d, self.patch, self.image);
        let gp = s / ps;
        let np = gp * gp;
        let t = np + 1;
        let kdim = c * ps * ps;
        // im2col: row (b, py, px) = [c, ky, kx]
        let mut cols = vec![0f32; b * np * kdim];
        {
            use rayon::prelude::*;
            cols.par_chunks_mut(kdim).enumerate().for_each(|(r, row)| {
                let (bi, pi) = (r / np, r % np);
                let (py, pxx) = (pi / gp, pi % gp);
                for ci in 0..c {
                    for ky in 0..ps {
                        let src = ((bi * c + ci) * s + py * ps + ky) * s + pxx * ps;
                        let dst = (ci * ps + ky) * ps;
                        row[dst..dst + ps].copy_from_slice(&px[src..src + ps]);
                    }
                }
            });
        }
        // patch embeddings in one GEMM, then x = [class | patches] + positions
        let mut pe = vec![0f32; b * np * d];
        cpu::linear(
            &cols,
            kdim,
            b * np,
            kdim,
            w[self.patch_w],
            d,
            None,
            None,
            &mut pe,
            d,
        );
        drop(cols);
        let mut x = vec![0f32; b * t * d];
        let (pos, class) = (w[self.pos], w[self.class]);
        {
            use rayon::prelude::*;
            x.par_chunks_mut(t * d).enumerate().for_each(|(bi, img)| {
                for (r, row) in img.chunks_mut(d).enumerate() {
                    let src = if r == 0 {
                        class
                    } else {
                        &pe[(bi * np + r - 1) * d..(bi * np + r) * d]
                    };
                    for ((o, a), p) in row.iter_mut().zip(src).zip(&pos[r * d..(r + 1) * d]) {
                        *o = a + p;
                    }
                }
            });
        }
        cpu::layer_norm(&mut x, d, w[self.pre.0], w[self.pre.1], 1e-5);
        let pool = vec![0usize; b];
        let mut pooled = self.enc.forward(&w, x, b, t, KeyMask::All, Some(&pool));
        cpu::layer_norm(&mut pooled, d, w[self.post.0], w[self.post.1], 1e-5);
        let mut out = vec![0f32; b * self.proj_dim];
        cpu::linear(
            &pooled,
            d,
            b,
            d,
            w[self.proj],
            self.proj_dim,
            None,
            None,
            &mut out,
            self.proj_dim,
        );
        Tensor::from_vec(out, (b, self.proj_dim), pixels.device())
    }
}

impl ClipText {
    /// Text features `[B, projection_dim]` of token ids `[B, T]`, pooled at the first
    /// arg-max id (EOS) of each row, as candle's / transformers' CLIP.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.max_pos {
            candle_core::bail!("sequence length {t} exceeds {} positions", self.max_pos);
        }
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let g = self.p.lock();
        let w = slices(&g)?;
        let d = self.d;
        let mut x = vec![0f32; b * t * d];
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} out of range");
            }
            let te = &w[self.tok][id * d..(id + 1) * d];
            let pe = &w[self.pos][(r % t) * d..(r % t + 1) * d];
            for ((o, a), p) in x[r * d..(r + 1) * d].iter_mut().zip(te).zip(pe) {
                *o = a + p;
            }
        }
        let pool: Vec<usize> = ids
            .chunks(t)
            .map(|row| {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if row[best] < v {
                        best = j;
                    }
                }
                best
            })
            .collect();
        let mut pooled = self.enc.forward(&w, x, b, t, KeyMask::Causal, Some(&pool));
        cpu::layer_norm(&mut pooled, d, w[self.fin.0], w[self.fin.1], 1e-5);
        let mut out = vec![0f32; b * self.proj_dim];
        cpu::linear(
            &pooled,
            d,
            b,
            d,
            w[self.proj],
            self.proj_dim,
            None,
            None,
            &mut out,
            self.proj_dim,
        );
        Tensor::from_vec(out, (b, self.proj_dim), &candle_core::Device::Cpu)
    }
}

/// candle-transformers' `BertModel` (absolute positions, token type 0).
pub struct FastBert {
    p: Params,
    enc: Encoder,
    word: usize,
    pos: usize,
    typ: usize,
    emb_ln: (usize, usize),
    d: usize,
    max_pos: usize,
    vocab: usize,
    eps: f32,
}

impl FastBert {
    /// From the VarBuilder `BertModel::load` used (with or without the `bert.` prefix).
    pub fn load(
        vb: &VarBuilder,
        c: &candle_transformers::models::bert::Config,
    ) -> Result<FastBert> {
        use candle_transformers::models::bert::HiddenAct;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb.clone()
        };
        let act = match c.hidden_act {
            HiddenAct::Gelu => Act::GeluErf,
            HiddenAct::GeluApproximate => Act::GeluTanh,
            HiddenAct::Relu => Act::Relu,
        };
        let d = c.hidden_size;
        let mut p = Params::default();
        let e = vb.pp("embeddings");
        let word = p.get(&e, (c.vocab_size, d), "word_embeddings.weight")?;
        let pos = p.get(
            &e,
            (c.max_position_embeddings, d),
            "position_embeddings.weight",
        )?;
        let typ = p.get(&e, (c.type_vocab_size, d), "token_type_embeddings.weight")?;
        let emb_ln = layer_norm_params(&mut p, &e.pp("LayerNorm"), d)?;
        let spec = EncoderSpec {
            d,
            heads: c.num_attention_heads,
            ff: c.intermediate_size,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps as f32,
            act,
            pre_ln: false,
        };
        let enc = Encoder::load(&mut p, vb.pp("encoder.layer"), spec, &BERT_NAMES)?;
        Ok(FastBert {
            p,
            enc,
            word,
            pos,
            typ,
            emb_ln,
            d,
            max_pos: c.max_position_embeddings,
            vocab: c.vocab_size,
            eps: c.layer_norm_eps as f32,
        })
    }

    /// Last hidden states `[B, T, H]` (`pool_cls = false`) or the `[CLS]` rows `[B, H]`, for
    /// ids and a 0/1 attention mask `[B, T]` (token type 0 everywhere).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, pool_cls: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.max_pos {
            candle_core::bail!("sequence length {t} exceeds {} positions", self.max_pos);
        }
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let valid: Vec<bool> = mask
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .iter()
            .map(|&m| m != 0)
            .collect();
        if valid.chunks(t).any(|r| !r.iter().any(|&v| v)) {
            candle_core::bail!("a sequence with no visible token");
        }
        let g = self.p.lock();
        let w = slices(&g)?;
        let d = self.d;
        let mut x = vec![0f32; b * t * d];
        let typ = &w[self.typ][..d];
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} out of range");
            }
            let we = &w[self.word][id * d..(id + 1) * d];
            let pe = &w[self.pos][(r % t) * d..(r % t + 1) * d];
            for (((o, a), ty), p) in x[r * d..(r + 1) * d].iter_mut().zip(we).zip(typ).zip(pe) {
                *o = (a + ty) + p;
            }
        }
        cpu::layer_norm(&mut x, d, w[self.emb_ln.0], w[self.emb_ln.1], self.eps);
        let pool = vec![0usize; b];
        let out = self.enc.forward(
            &w,
            x,
            b,
            t,
            KeyMask::Valid(&valid),
            if pool_cls { Some(&pool) } else { None },
        );
        if pool_cls {
            Tensor::from_vec(out, (b, d), &candle_core::Device::Cpu)
        } else {
            Tensor::from_vec(out, (b, t, d), &candle_core::Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_abs_diff, randn};
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn fast_clip_matches_candle() {
        let dev = Device::Cpu;
        let clip = crate::models::clip::tiny_clip(3, &dev).unwrap();
        assert!(clip.fast.is_some(), "tiny CLIP should get the fast path");
        let x = randn(5, &[3, 3, 32, 32]);
        let fast = clip.encode_images(&x).unwrap();
        let slow = clip.model.get_image_features(&x).unwrap();
        let d = max_abs_diff(&fast, &slow);
        assert!(
            d < 2e-5 * max_abs(&slow).max(1.0),
            "image features differ by {d}"
        );
        // ids with EOS (99) padding: pooled at the first EOS
        let ids = Tensor::from_vec(
            vec![98u32, 5, 7, 99, 99, 99, 98, 1, 2, 3, 4, 99, 98, 99, 99, 99],
            (4, 4),
            &dev,
        )
        .unwrap()
        .reshape((2, 8))
        .unwrap();
        let fast = clip.encode_token_ids(&ids).unwrap();
        let slow = clip.model.get_text_features(&ids).unwrap();
        let d = max_abs_diff(&fast, &slow);
        assert!(
            d < 2e-5 * max_abs(&slow).max(1.0),
            "text features differ by {d}"
        );
    }

    /// Sets every variable of `vm` to seeded random values (layer norms near 1), in name order.
    fn randomise(vm: &VarMap, seed: u64) {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let v = &data[name];
            let vals = crate::models::random_values(
                &mut rng,
                name,
                v.elem_count(),
                name.contains("LayerNorm"),
            );
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    /// A batch split into two halves over the threads (`Encoder::forward`) gives the same bits
    /// as the whole batch run single-threaded in one piece, at MiniLM's sizes (384 wide, 12
    /// heads, 1536-wide MLP, padded sequences), for every row and for the pooled CLS rows; and
    /// two sequences alone give the same bits as inside the batch (a single pooled row would
    /// take the GEMM's matrix-vector path, which sums in another order).
    #[test]
    fn encoder_split_is_bit_identical() {
        use candle_transformers::models::bert::Config;
        use rand::{Rng, SeedableRng};
        if crate::kernels::cpu::threads() < 2 {
            eprintln!(
                "encoder_split_is_bit_identical: one kernel thread here, no split to compare"
            );
            return;
        }
        let dev = Device::Cpu;
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 200, "hidden_size": 384, "num_hidden_layers": 2,
            "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
        }))
        .unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        candle_transformers::models::bert::BertModel::load(vb.clone(), &cfg).unwrap();
        randomise(&vm, 3);
        let fast = FastBert::load(&vb, &cfg).unwrap();
        let (b, t) = (9, 23);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0u32; b * t];
        for r in 0..b {
            let len = t - r % 5;
            for j in 0..len {
                ids[r * t + j] = rng.random_range(1..200);
                mask[r * t + j] = 1;
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (b, t), &dev).unwrap();
        let bits = |x: &Tensor| {
            x.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        for pool in [false, true] {
            let split = fast.forward(&ids, &mask, pool).unwrap();
            let whole = crate::kernels::cpu::serial(|| fast.forward(&ids, &mask, pool).unwrap());
            assert!(bits(&split) == bits(&whole), "pool {pool}: split differs");
            let r = 4;
            let two = fast
                .forward(
                    &ids.narrow(0, r, 2).unwrap(),
                    &mask.narrow(0, r, 2).unwrap(),
                    pool,
                )
                .unwrap();
            assert!(
                bits(&two) == bits(&split.narrow(0, r, 2).unwrap()),
                "pool {pool}: two sequences alone differ from the same in the batch"
            );
        }
    }

    #[test]
    fn fast_bert_matches_candle() {
        use candle_transformers::models::bert::{BertModel, Config, HiddenAct};
        let dev = Device::Cpu;
        for act in [HiddenAct::Gelu, HiddenAct::GeluApproximate, HiddenAct::Relu] {
            let cfg: Config = serde_json::from_value(serde_json::json!({
                "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0, "max_position_embeddings": 16, "type_vocab_size": 2,
                "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
            }))
            .unwrap();
            let cfg = Config {
                hidden_act: act,
                ..cfg
            };
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let model = BertModel::load(vb.clone(), &cfg).unwrap();
            randomise(&vm, 1);
            let fast = FastBert::load(&vb, &cfg).unwrap();
            let ids =
                Tensor::from_vec(vec![1u32, 7, 9, 11, 2, 1, 5, 2, 0, 0], (2, 5), &dev).unwrap();
            let mask =
                Tensor::from_vec(vec![1u32, 1, 1, 1, 1, 1, 1, 1, 0, 0], (2, 5), &dev).unwrap();
            let slow = model
                .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
                .unwrap();
            let f = fast.forward(&ids, &mask, false).unwrap();
            let d = max_abs_diff(&f, &slow);
            assert!(d < 5e-5, "{act:?}: hidden states differ by {d}");
            let cls = fast.forward(&ids, &mask, true).unwrap();
            let d = max_abs_diff(&cls, &slow.narrow(1, 0, 1).unwrap().squeeze(1).unwrap());
            assert!(d < 5e-5, "{act:?}: CLS rows differ by {d}");
        }
    }

    #[test]
    fn fast_path_is_deterministic() {
        let clip = crate::models::clip::tiny_clip(4, &Device::Cpu).unwrap();
        let x = randn(6, &[5, 3, 32, 32]);
        let a = clip.encode_images(&x).unwrap().to_vec2::<f32>().unwrap();
        let b = clip.encode_images(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
