//! Per-example outputs (docs/experiments.md, "Predictions files"): `--save-predictions` writes
//! `seed-<n>.predictions.jsonl.gz` beside `seed-<n>.json`, and `gpt2-fairness` writes its samples
//! with their token ids to `seed-<n>.samples.jsonl.gz`.
//!
//! Both are gzip-compressed JSON Lines: the first line is a header object (`schema`, `version`,
//! `experiment`, `seed`, …), every further line one example. They are written atomically (temp
//! file, fsync, rename) after the seed's computation and before its `seed-<n>.json`, so a result
//! file whose predictions were requested never exists without them. The gzip header carries no
//! time stamp: the same run gives the same bytes.
//!
//! A classification row: `{"index", "label", "methods": {<method>: {"pred", "correct", "top",
//! "scores"}}, "canonical"?}`; a sequence row (SCAN): `{"index", "command", "label",
//! "methods": {<method>: {"pred", "correct"}}}`. `equirun report` reads `pred`, `correct` and
//! `label` of any row ([`summarize`]).

use crate::output;
use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// `schema` of a predictions file.
pub const SCHEMA: &str = "equirun-predictions";
/// `schema` of a `gpt2-fairness` samples file.
pub const SAMPLES_SCHEMA: &str = "equirun-samples";
/// Version of both schemas.
pub const VERSION: u32 = 1;
/// Classes kept per example and method.
pub const TOP_K: usize = 5;

/// `--save-predictions`, shared by every experiment that classifies or decodes examples.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
pub struct PredictionOpts {
    /// Also write seed-N.predictions.jsonl.gz beside seed-N.json: per test example its label and
    /// per method the prediction, whether it is correct and (classifiers) the top-5 classes with
    /// their scores (docs/experiments.md, "Predictions files"). Does not change the run's config
    /// or name; a seed that is already done is skipped as usual (--force recomputes it).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub save_predictions: bool,
}

/// `seed-<n>.json` → `seed-<n>.predictions.jsonl.gz`.
pub fn predictions_path(seed_json: &Path) -> PathBuf {
    seed_json.with_extension("predictions.jsonl.gz")
}

/// `seed-<n>.json` → `seed-<n>.samples.jsonl.gz`.
pub fn samples_path(seed_json: &Path) -> PathBuf {
    seed_json.with_extension("samples.jsonl.gz")
}

/// Writes `header` then `rows` as gzip JSON Lines, atomically.
pub fn write_jsonl_gz(path: &Path, header: &Value, rows: &[Value]) -> Result<()> {
    output::write_atomic_with(path, ".jsonl.gz", |tmp| {
        let f = std::fs::File::create(tmp)?;
        // no file name, mtime 0: deterministic bytes
        let mut enc: GzEncoder<_> = GzBuilder::new()
            .mtime(0)
            .write(std::io::BufWriter::new(f), Compression::default());
        serde_json::to_writer(&mut enc, header)?;
        enc.write_all(b"\n")?;
        for r in rows {
            serde_json::to_writer(&mut enc, r)?;
            enc.write_all(b"\n")?;
        }
        enc.finish()?.flush()?;
        Ok(())
    })
}

/// Reads a file written by [`write_jsonl_gz`]: the header and the rows.
pub fn read_jsonl_gz(path: &Path) -> Result<(Value, Vec<Value>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::new(GzDecoder::new(f)).lines();
    let header: Value = match lines.next() {
        Some(l) => serde_json::from_str(&l.with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{}: the header line is not JSON", path.display()))?,
        None => bail!("{} is empty", path.display()),
    };
    let mut rows = Vec::new();
    for (i, l) in lines.enumerate() {
        let l = l.with_context(|| format!("reading {}", path.display()))?;
        rows.push(
            serde_json::from_str(&l)
                .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 2))?,
        );
    }
    Ok((header, rows))
}

/// The `k` highest scores of a row with their classes, highest first, ties towards the lower
/// class index (the rule of the top-1/top-5 metrics).
pub fn top_k(row: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k.min(row.len()));
    let scores = idx.iter().map(|&c| row[c]).collect();
    (idx, scores)
}

/// The header of a classification predictions file.
pub fn class_header(
    experiment: &str,
    seed: u64,
    methods: &[&str],
    classes: &[String],
    score: &str,
    extra: Value,
) -> Value {
    let mut h = json!({
        "schema": SCHEMA, "version": VERSION, "kind": "classification",
        "experiment": experiment, "seed": seed, "methods": methods, "classes": classes,
        "top_k": TOP_K, "score": score,
    });
    if let (Some(h), Value::Object(e)) = (h.as_object_mut(), extra) {
        h.extend(e);
    }
    h
}

/// One classification row: per method (in order) its score row over the classes.
pub fn class_row(index: usize, label: usize, methods: &[(&str, &[f32])]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, row) in methods {
        let (top, scores) = top_k(row, TOP_K);
        m.insert(
            name.to_string(),
            json!({"pred": top[0], "correct": top[0] == label, "top": top, "scores": scores}),
        );
    }
    json!({"index": index, "label": label, "methods": m})
}

/// Collects a seed's rows and writes them when asked.
pub struct Collector {
    pub enabled: bool,
    pub rows: Vec<Value>,
}

impl Collector {
    pub fn new(opts: &PredictionOpts) -> Collector {
        Collector {
            enabled: opts.save_predictions,
            rows: Vec::new(),
        }
    }
    /// Writes the rows beside `seed_json` (no-op when not enabled); returns the file name.
    pub fn write(&mut self, seed_json: &Path, header: &Value) -> Result<Option<String>> {
        if !self.enabled {
            return Ok(None);
        }
        let path = predictions_path(seed_json);
        write_jsonl_gz(&path, header, &self.rows)?;
        self.rows.clear();
        Ok(path.file_name().map(|f| f.to_string_lossy().into_owned()))
    }
}

/// Says which done seeds will not get a predictions file (they are skipped: same config).
pub fn warn_skipped(opts: &PredictionOpts, folder: &super::harness::RunFolder, seeds: &[u64]) {
    if !opts.save_predictions || folder.force {
        return;
    }
    for p in seeds.iter().map(|&s| folder.seed_path(s)) {
        if !predictions_path(&p).exists()
            && matches!(
                super::harness::check_existing(&p, folder.config),
                Ok(super::harness::Existing::SameConfig)
            )
        {
            eprintln!(
                "note: {} is done and has no predictions file; --save-predictions does not rerun it (add --force)",
                p.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` computes from a predictions file

/// Per-class top-1 accuracy and pairwise method agreement of one predictions file.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub experiment: String,
    pub seed: u64,
    pub methods: Vec<String>,
    pub n: usize,
    /// (class name, examples, correct per method); classification files only.
    pub per_class: Vec<(String, usize, Vec<usize>)>,
    /// `agreement[a][b]`: examples on which methods a and b predict the same.
    pub agreement: Vec<Vec<usize>>,
    /// Correct predictions per method.
    pub correct: Vec<usize>,
}

/// Computes the report's tables from a predictions file's header and rows.
pub fn summarize(header: &Value, rows: &[Value]) -> Result<Summary> {
    if header["schema"] != SCHEMA {
        bail!(
            "not a predictions file (schema {:?}, expected {SCHEMA:?})",
            header["schema"]
        );
    }
    let methods: Vec<String> = header["methods"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if methods.is_empty() {
        bail!("the predictions header lists no methods");
    }
    let classes: Option<Vec<String>> = header["classes"].as_array().map(|a| {
        a.iter()
            .map(|c| c.as_str().unwrap_or("?").to_string())
            .collect()
    });
    let k = methods.len();
    let mut per_class: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
    let mut agreement = vec![vec![0usize; k]; k];
    let mut correct = vec![0usize; k];
    for (i, r) in rows.iter().enumerate() {
        let preds: Vec<&Value> = methods.iter().map(|m| &r["methods"][m]["pred"]).collect();
        if preds.iter().any(|p| p.is_null()) {
            bail!("row {} lacks a prediction for every method", i + 1);
        }
        let ok: Vec<bool> = methods
            .iter()
            .map(|m| r["methods"][m]["correct"].as_bool() == Some(true))
            .collect();
        for a in 0..k {
            correct[a] += ok[a] as usize;
            for b in 0..k {
                agreement[a][b] += (preds[a] == preds[b]) as usize;
            }
        }
        if classes.is_some() {
            let label = r["label"]
                .as_u64()
                .with_context(|| format!("row {} has no class label", i + 1))?
                as usize;
            let e = per_class.entry(label).or_insert((0, vec![0; k]));
            e.0 += 1;
            for a in 0..k {
                e.1[a] += ok[a] as usize;
            }
        }
    }
    let per_class = per_class
        .into_iter()
        .map(|(c, (n, ok))| {
            let name = classes
                .as_ref()
                .and_then(|cs| cs.get(c).cloned())
                .unwrap_or_else(|| c.to_string());
            (name, n, ok)
        })
        .collect();
    Ok(Summary {
        experiment: header["experiment"].as_str().unwrap_or("?").to_string(),
        seed: header["seed"].as_u64().unwrap_or(0),
        methods,
        n: rows.len(),
        per_class,
        agreement,
        correct,
    })
}

fn pct(a: usize, n: usize) -> String {
    if n == 0 {
        "—".into()
    } else {
        format!("{:.2}", 100.0 * a as f64 / n as f64)
    }
}

impl Summary {
    /// Markdown: the per-class accuracy table (classification) and the agreement table.
    pub fn markdown(&self, source: &str) -> String {
        let mut md = format!(
            "### {source} — seed {} ({} examples)\n\n",
            self.seed, self.n
        );
        if !self.per_class.is_empty() {
            md += "Top-1 accuracy (%) per class:\n\n| class | n |";
            for m in &self.methods {
                md += &format!(" {m} |");
            }
            md += "\n|---|---:|";
            md += &"---:|".repeat(self.methods.len());
            md += "\n";
            for (c, n, ok) in &self.per_class {
                md += &format!("| {} | {n} |", c.replace('|', "\\|"));
                for a in ok {
                    md += &format!(" {} |", pct(*a, *n));
                }
                md += "\n";
            }
            md += &format!("| **all** | {} |", self.n);
            for a in &self.correct {
                md += &format!(" {} |", pct(*a, self.n));
            }
            md += "\n\n";
        }
        md += "Agreement (% of examples with the same prediction):\n\n| |";
        for m in &self.methods {
            md += &format!(" {m} |");
        }
        md += "\n|---|";
        md += &"---:|".repeat(self.methods.len());
        md += "\n";
        for (a, m) in self.methods.iter().enumerate() {
            md += &format!("| {m} |");
            for b in 0..self.methods.len() {
                md += &format!(" {} |", pct(self.agreement[a][b], self.n));
            }
            md += "\n";
        }
        md + "\n"
    }

    /// CSV rows `source,seed,table,row,column,count,n,percent`.
    pub fn csv_rows(&self, source: &str) -> Vec<String> {
        let q = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = Vec::new();
        for (c, n, ok) in &self.per_class {
            for (a, m) in self.methods.iter().enumerate() {
                out.push(format!(
                    "{},{},per_class,{},{},{},{n},{}",
                    q(source),
                    self.seed,
                    q(c),
                    q(m),
                    ok[a],
                    pct(ok[a], *n)
                ));
            }
        }
        for (a, ma) in self.methods.iter().enumerate() {
            for (b, mb) in self.methods.iter().enumerate() {
                out.push(format!(
                    "{},{},agreement,{},{},{},{},{}",
                    q(source),
                    self.seed,
                    q(ma),
                    q(mb),
                    self.agreement[a][b],
                    self.n,
                    pct(self.agreement[a][b], self.n)
                ));
            }
        }
        out
    }
}
