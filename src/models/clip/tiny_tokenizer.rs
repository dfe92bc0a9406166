//! The word-level tokenizer of the tiny random CLIP fixtures (HF and OpenCLIP layouts alike).

use anyhow::{bail, Result};

/// A word-level tokenizer.json for the tiny CLIP: lowercase, whitespace/punctuation split,
/// `<|startoftext|>`=98 … `<|endoftext|>`=99 around every text; unknown words map to `<unk>`=0.
pub fn tiny_tokenizer_json(words: &[&str]) -> Result<serde_json::Value> {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    let mut next = 1u32;
    for w in words {
        let w = w.to_lowercase();
        if vocab.contains_key(&w) {
            continue;
        }
        if next >= 98 {
            bail!("tiny tokenizer vocabulary is full (97 words)");
        }
        vocab.insert(w, next.into());
        next += 1;
    }
    vocab.insert("<|startoftext|>".into(), 98.into());
    vocab.insert("<|endoftext|>".into(), 99.into());
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 98, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 99, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
            "special_tokens": {
                "<|startoftext|>": {"id": "<|startoftext|>", "ids": [98], "tokens": ["<|startoftext|>"]},
                "<|endoftext|>": {"id": "<|endoftext|>", "ids": [99], "tokens": ["<|endoftext|>"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    }))
}
