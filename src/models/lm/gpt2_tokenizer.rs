//! GPT-2 byte-level BPE tokenizer, built offline.
//!
//! The only GPT-2 vocabulary compiled into a crate is the `r50k_base.tiktoken` rank table that
//! `tiktoken-rs` embeds with `include_str!` (it also ships `assets/encoder.json` and
//! `assets/vocab.bpe` in its package, but does not compile them in, so they are not reachable from
//! a build without knowing the registry path). [`gpt2_tokenizer`] therefore reads the 50,256
//! byte strings back through `CoreBPE::decode_bytes` (id = rank), derives the 50,000 BPE merges
//! from the ranks (the same derivation HF `transformers` uses to convert tiktoken files: for each
//! token, run rank-ordered BPE on its bytes with only lower ranks allowed; the two parts left
//! are its merge), and assembles a `tokenizers` BPE with GPT-2's ByteLevel pre-tokenizer
//! (no prefix space, the GPT-2 split regex), ByteLevel decoder and `<|endoftext|>` = 50256 as a
//! special added token. The result is id-for-id identical to tiktoken `r50k_base` (= HF `gpt2`);
//! `tests/lm_backends.rs` checks this on 6,000 real GPT-2 samples and that the derived merges are
//! exactly the shipped `vocab.bpe` (when the crate source is found).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// GPT-2 vocabulary size (50,256 BPE tokens + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// Id of `<|endoftext|>` in GPT-2.
pub const GPT2_EOT: u32 = 50256;
/// The GPT-2 end-of-text marker.
pub const GPT2_EOT_STR: &str = "<|endoftext|>";

/// GPT-2's reversible byte → printable-char map (`bytes_to_unicode` in `encoder.py`).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut printable = [false; 256];
    for b in (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        printable[b as usize] = true;
        out[b as usize] = char::from(b);
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !printable[b] {
            out[b] = char::from_u32(256 + n).expect("valid char");
            n += 1;
        }
    }
    out
}

/// Renders raw token bytes in the byte-level alphabet used by `vocab.json` / `tokenizer.json`.
pub fn bytes_to_token_string(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Pre-tokenizer flavour of a byte-level BPE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytePre {
    /// GPT-2: the GPT-2 split regex, then bytes → chars.
    Gpt2,
    /// As [`BytePre::Gpt2`], but every digit first becomes its own piece (llama.cpp pre-types
    /// `smollm`, `starcoder`, `refact`, …; HF `Digits(individual_digits=true)`).
    Gpt2SplitDigits,
    /// Split on this regex (matches isolated), then bytes → chars without the GPT-2 regex
    /// (llama-3, qwen2 style).
    Regex(String),
}

/// Assembles a byte-level BPE [`Tokenizer`] (no normalizer, no prefix space, ByteLevel decoder).
/// `vocab` keys and `merges` are in the byte-level alphabet; `specials` become special added
/// tokens (they must already be in `vocab`, so their ids stay put).
pub fn byte_level_bpe(
    vocab: Vocab,
    merges: Merges,
    specials: &[String],
    pre: BytePre,
) -> Result<Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow!("building BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match pre {
        BytePre::Gpt2 => byte_level.into(),
        BytePre::Gpt2SplitDigits => Sequence::new(vec![
            PreTokenizerWrapper::from(Digits::new(true)),
            byte_level.into(),
        ])
        .into(),
        BytePre::Regex(re) => {
            let split = Split::new(
                SplitPattern::Regex(re),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
            Sequence::new(vec![
                PreTokenizerWrapper::from(split),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
    };
    tok.with_pre_tokenizer(Some(pre));
    tok.with_post_processor(Some(ByteLevelProcessor::new(false, false, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    if !specials.is_empty() {
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(s.clone(), true))
            .collect();
        tok.add_special_tokens(added)
            .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    }
    Ok(tok)
}

/// The bytes of every GPT-2 BPE token, indexed by id (0..50256), from tiktoken-rs `r50k_base`.
pub fn r50k_token_bytes() -> Result<Vec<Vec<u8>>> {
    let core = tiktoken_rs::r50k_base_singleton();
    let mut out = Vec::with_capacity(GPT2_VOCAB_SIZE - 1);
    for id in 0..GPT2_EOT {
        let b = core
            .decode_bytes(&[id])
            .map_err(|e| anyhow!("r50k_base has no token {id}: {e:?}"))?;
        out.push(b);
    }
    Ok(out)
}

/// Splits `token` by rank-ordered BPE using only ranks `< max_rank` (tiktoken semantics).
fn bpe_split(token: &[u8], ranks: &HashMap<&[u8], u32>, max_rank: u32) -> Vec<(usize, usize)> {
    let mut parts: Vec<(usize, usize)> = (0..token.len()).map(|i| (i, i + 1)).collect();
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..parts.len().saturating_sub(1) {
            let (s, _) = parts[i];
            let (_, e) = parts[i + 1];
            if let Some(&r) = ranks.get(&token[s..e]) {
                if r < max_rank && best.is_none_or(|(br, _)| r < br) {
                    best = Some((r, i));
                }
            }
        }
        match best {
            None => break,
            Some((_, i)) => {
                parts[i].1 = parts[i + 1].1;
                parts.remove(i + 1);
            }
        }
    }
    parts
}

/// Derives GPT-2's merges (in priority order) from the tiktoken rank table: for every multi-byte
/// token, BPE with lower ranks must leave exactly two parts, which form its merge.
pub fn merges_from_ranks(tokens: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let ranks: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_slice(), i as u32))
        .collect();
    let mut merges = Vec::new();
    for (rank, tok) in tokens.iter().enumerate() {
        if tok.len() < 2 {
            continue;
        }
        let parts = bpe_split(tok, &ranks, rank as u32);
        if parts.len() != 2 {
            bail!(
                "token {rank} ({:?}) does not reduce to one merge ({} parts)",
                String::from_utf8_lossy(tok),
                parts.len()
            );
        }
        merges.push((tok[..parts[0].1].to_vec(), tok[parts[1].0..].to_vec()));
    }
    Ok(merges)
}

fn build_gpt2() -> Result<Tokenizer> {
    let tokens = r50k_token_bytes()?;
    let table = bytes_to_unicode();
    let merges = merges_from_ranks(&tokens)?;
    let mut vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (bytes_to_token_string(t, &table), i as u32))
        .collect();
    if vocab.len() != GPT2_EOT as usize {
        bail!("r50k_base: {} distinct tokens, expected 50256", vocab.len());
    }
    vocab.insert(GPT2_EOT_STR.to_string(), GPT2_EOT);
    let merges: Merges = merges
        .iter()
        .map(|(a, b)| {
            (
                bytes_to_token_string(a, &table),
                bytes_to_token_string(b, &table),
            )
        })
        .collect();
    byte_level_bpe(vocab, merges, &[GPT2_EOT_STR.to_string()], BytePre::Gpt2)
}

/// The GPT-2 tokenizer (tiktoken `r50k_base` = HF `gpt2`), built offline from the rank table in
/// `tiktoken-rs`. Built once per process (~0.1–0.3 s) and cloned afterwards.
pub fn gpt2_tokenizer() -> Result<Tokenizer> {
    static CELL: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
    CELL.get_or_init(|| build_gpt2().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building the GPT-2 tokenizer: {e}"))
}

/// GPT-2's merges as `vocab.bpe` lines (`"Ġ t"`, …, without the `#version` header), derived from
/// `r50k_base`; useful to write a `merges.txt` or to compare against a shipped `vocab.bpe`.
pub fn gpt2_merges_lines() -> Result<Vec<String>> {
    let tokens = r50k_token_bytes()?;
    let table = bytes_to_unicode();
    Ok(merges_from_ranks(&tokens)?
        .iter()
        .map(|(a, b)| {
            format!(
                "{} {}",
                bytes_to_token_string(a, &table),
                bytes_to_token_string(b, &table)
            )
        })
        .collect())
}

/// Loads a `tokenizer.json` (e.g. from a model repository).
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))
}
