//! The one loader of causal LMs (`gpt2-fairness`, `bench-lm`): a llama GGUF file or a GPT-2
//! snapshot, with its tokenizer. A file of its own so that `lm.rs` (the trait) stays below the
//! model files that implement it.

use crate::models::lm::CausalLm;
use anyhow::Result;
use serde_json::{json, Value};

/// Loads a causal LM and its tokenizer on `dev` in `dtype` (GPT-2 only; logits are f32) — the one loader of `gpt2-fairness` and `bench-lm`:
/// a llama GGUF file (`gguf`, or `--model smollm2` for the SmolLM2 GGUF installed by
/// scripts/setup_smollm2.sh; tokenizer rebuilt from its metadata), else a GPT-2 snapshot from
/// `source` (tokenizer.json when present, else the GPT-2 BPE of tiktoken-rs). Returns the model,
/// the tokenizer and a description for result JSON.
pub fn load_lm(
    source: &crate::hub::ModelSource,
    gguf: Option<&std::path::Path>,
    dev: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<(Box<dyn CausalLm>, tokenizers::Tokenizer, Value)> {
    let gguf = match (gguf, source.model.as_str()) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, "smollm2") => Some(crate::models::lm::gguf::find_smollm2()?),
        _ => None,
    };
    if let Some(path) = gguf {
        if dtype != candle_core::DType::F32 {
            anyhow::bail!(
                "--dtype {}: a GGUF model ({}) computes with its own quantised weights; --dtype \
                 applies to GPT-2 snapshots only. Omit --dtype or pass --dtype f32",
                dtype.as_str(),
                path.display()
            );
        }
        let (lm, tok) = crate::models::lm::gguf::load_gguf(&path, dev)?;
        let desc =
            json!({"kind": "gguf", "path": path.display().to_string(), "arch": lm.describe()});
        return Ok((Box::new(lm), tok, desc));
    }
    let files = source.resolve(crate::models::lm::gpt2::REQUIRED_FILES, &["tokenizer.json"])?;
    let lm = crate::models::lm::gpt2::load_gpt2_with(&files, dev, dtype)?;
    let (tok, tok_src) = match files.files.get("tokenizer.json") {
        Some(p) => (
            tokenizers::Tokenizer::from_file(p)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            crate::models::lm::gpt2_tokenizer::gpt2_tokenizer()?,
            "GPT-2 BPE bundled with tiktoken-rs (r50k_base)".to_string(),
        ),
    };
    let desc = json!({"kind": "gpt2", "origin": files.origin, "arch": lm.describe(), "tokenizer": tok_src});
    Ok((Box::new(lm), tok, desc))
}
