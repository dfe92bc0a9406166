//! `equirun report RESULTS_DIR`: per-seed result JSONs → mean ± std tables shaped like the
//! papers' (Markdown and CSV) and bar plots (SVG and PNG).
//!
//! * CLIP (`clip`): one table per dataset and setting (images, logit scale, corruption draw);
//!   rows model × transform, columns methods (top-1 %). A method whose wrapper group differs
//!   from the transform is shown as `method (group)`.
//! * SCAN (`scan-pretrain`, `scan-finetune`): one table per dataset; rows cell × test split,
//!   columns `pretrained` and the finetuning methods (`method (zero-shot)` for `--iters 0`).
//! * Fairness (`gpt2-fairness`): one table per model; rows demographic axes × contexts,
//!   columns methods (swap consistency, 0–1).
//!
//! Values are the mean ± sample standard deviation (n − 1) over seeds. Each table's reference
//! seed set is the most common seed set of its cells; a cell with other seeds is marked
//! incomplete (missing / extra seeds listed) rather than silently averaged over fewer. When
//! several run folders fill the same cell with values that disagree on a shared seed, the cell
//! is split into one column per run folder (`method [run]`). Adding an experiment is one
//! `extract_*` function and one line in [`extract`].

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One number: a table cell's value for one seed.
#[derive(Clone, Debug)]
pub struct Obs {
    pub family: Family,
    pub title: String,
    pub setting: Vec<(String, String)>,
    pub row: Vec<String>,
    pub column: String,
    pub seed: u64,
    pub value: f64,
    /// `<experiment>/<run folder>`.
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Clip,
    Scan,
    Fairness,
    /// Regard disparity: the largest TVD between an axis' demographics.
    Regard,
    /// Multi-image classification accuracy per model.
    MultiImage,
    /// The pretrained CNN, zero-shot and finetuned through the wrappers.
    Cnn,
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self {
            Family::Clip => "clip",
            Family::Scan => "scan",
            Family::Fairness => "fairness",
            Family::Regard => "regard",
            Family::MultiImage => "multi-image",
            Family::Cnn => "cnn",
        }
    }
    fn row_fields(&self) -> &'static [&'static str] {
        match self {
            Family::Clip => &["model", "transform"],
            Family::Scan => &["cell", "test split"],
            Family::Fairness => &["axes", "contexts"],
            Family::Regard => &["axis", "context"],
            Family::MultiImage => &["k", "test tuples"],
            Family::Cnn => &["stage", "test images"],
        }
    }
    fn decimals(&self) -> usize {
        match self {
            Family::Fairness | Family::Regard => 3,
            _ => 2,
        }
    }
    fn y_max(&self) -> f64 {
        match self {
            Family::Fairness | Family::Regard => 1.0,
            _ => 100.0,
        }
    }
    fn y_label(&self) -> &'static str {
        match self {
            Family::Clip => "top-1 accuracy (%)",
            Family::Scan => "test accuracy (%)",
            Family::Fairness => "swap consistency",
            Family::Regard => "max TVD of regard labels",
            Family::MultiImage => "test accuracy (%)",
            Family::Cnn => "test accuracy (%)",
        }
    }
}

/// Statistics of one cell.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStats {
    pub mean: f64,
    /// Sample standard deviation (n − 1); `None` for one seed.
    pub std: Option<f64>,
    pub seeds: Vec<u64>,
    /// Seeds of the table's reference set that this cell lacks.
    pub missing: Vec<u64>,
    /// Seeds this cell has beyond the reference set.
    pub extra: Vec<u64>,
    pub sources: Vec<String>,
}

impl CellStats {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// One aggregated table.
#[derive(Clone, Debug)]
pub struct Table {
    pub family: Family,
    pub title: String,
    pub setting: Vec<(String, String)>,
    pub row_fields: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub columns: Vec<String>,
    /// `cells[r][c]`.
    pub cells: Vec<Vec<Option<CellStats>>>,
    /// The most common seed set of the table's cells.
    pub reference_seeds: Vec<u64>,
    /// File stem of its CSV / SVG / PNG.
    pub slug: String,
}

impl Table {
    pub fn cell(&self, row: &[&str], column: &str) -> Option<&CellStats> {
        let r = self
            .rows
            .iter()
            .position(|x| x.iter().map(String::as_str).eq(row.iter().copied()))?;
        let c = self.columns.iter().position(|x| x == column)?;
        self.cells[r][c].as_ref()
    }
    pub fn format_cell(&self, s: &CellStats) -> String {
        let d = self.family.decimals();
        let mut out = match s.std {
            Some(sd) => format!("{:.d$} ± {:.d$}", s.mean, sd),
            None => format!("{:.d$}", s.mean),
        };
        if !s.complete() {
            let _ = write!(
                out,
                " ⚠ {}/{} seeds",
                s.seeds.len() - s.extra.len(),
                self.reference_seeds.len()
            );
            if !s.missing.is_empty() {
                let _ = write!(out, ", missing {}", join(&s.missing, " "));
            }
            if !s.extra.is_empty() {
                let _ = write!(out, ", extra {}", join(&s.extra, " "));
            }
        }
        out
    }
    pub fn incomplete_cells(&self) -> usize {
        self.cells
            .iter()
            .flatten()
            .flatten()
            .filter(|c| !c.complete())
            .count()
    }
}

/// Everything `report` produced.
#[derive(Debug)]
pub struct Report {
    pub tables: Vec<Table>,
    pub markdown: String,
    /// Files written (report.md, CSVs, SVGs, PNGs).
    pub files: Vec<PathBuf>,
    /// Result files read.
    pub records: usize,
    /// Unreadable or unknown files.
    pub warnings: Vec<String>,
}

fn join(v: &[u64], sep: &str) -> String {
    v.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn short_id(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// extraction: one function per experiment

/// The observations of one result file; `None` for an experiment the report does not know.
pub fn extract(rec: &Value, source: &str) -> Option<Vec<Obs>> {
    match rec.get("experiment")?.as_str()? {
        "clip" => Some(extract_clip(rec, source)),
        "scan-pretrain" | "scan-finetune" => Some(extract_scan(rec, source)),
        "gpt2-fairness" => {
            let mut o = extract_fairness(rec, source);
            o.extend(extract_regard(
                rec,
                &rec["metrics"]["regard"]["metrics"],
                source,
            ));
            Some(o)
        }
        "regard-score" => Some(extract_regard(rec, &rec["metrics"]["regard"], source)),
        "multi-image" => Some(extract_multi_image(rec, source)),
        "cnn" => Some(extract_cnn(rec, source)),
        _ => None,
    }
}

fn seed_of(rec: &Value) -> u64 {
    rec["seed"].as_u64().unwrap_or(0)
}

fn extract_clip(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let dataset = s(&c["dataset"]["name"]);
    let model = c["model"]["id"]
        .as_str()
        .filter(|x| !x.is_empty())
        .map(String::from)
        .unwrap_or_else(|| s(&c["model"]["path"]));
    let transform = if c["transform"].is_null() {
        "none".to_string()
    } else {
        s(&c["transform"]["name"])
    };
    let group = s(&c["group"]["name"]);
    let scale = &c["logit_scale"];
    let setting = vec![
        ("dataset".to_string(), dataset.clone()),
        ("images".into(), s(&c["dataset"]["n_images"])),
        (
            "logit scale".into(),
            format!("{} {}", s(&scale["mode"]), s(&scale["value"])),
        ),
        (
            "corruption draw".into(),
            if c["transform_per_batch"].as_bool() == Some(true) {
                "per batch".into()
            } else {
                "per image".into()
            },
        ),
        ("equizero".into(), s(&c["equizero_select"])),
    ];
    let mut out = Vec::new();
    if let Some(m) = rec["metrics"].as_object() {
        for (method, v) in m {
            let Some(top1) = v["top1"].as_f64() else {
                continue;
            };
            let column = if method == "vanilla" || group == transform {
                method.clone()
            } else {
                format!("{method} ({group})")
            };
            out.push(Obs {
                family: Family::Clip,
                title: format!("CLIP zero-shot top-1 accuracy (%) — {dataset}"),
                setting: setting.clone(),
                row: vec![model.clone(), transform.clone()],
                column,
                seed: seed_of(rec),
                value: top1,
                source: source.into(),
            });
        }
    }
    out
}

fn extract_scan(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let dataset = s(&c["data"]["dataset"]);
    let cell = c["model"]["cell"]
        .as_str()
        .or(c["train"]["cell"].as_str())
        .unwrap_or("?")
        .to_string();
    let mut setting = vec![("dataset".to_string(), dataset.clone())];
    if !c["data"]["eval_limit"].is_null() {
        setting.push((
            "test examples per split".into(),
            s(&c["data"]["eval_limit"]),
        ));
    }
    let column = if rec["experiment"] == "scan-pretrain" {
        "pretrained".to_string()
    } else {
        let m = s(&c["method"]);
        if c["iters"].as_u64() == Some(0) {
            format!("{m} (zero-shot)")
        } else {
            m
        }
    };
    let mut out = Vec::new();
    if let Some(t) = rec["metrics"]["test"].as_object() {
        for (split, v) in t {
            let Some(acc) = v["accuracy"].as_f64() else {
                continue;
            };
            out.push(Obs {
                family: Family::Scan,
                title: format!("SCAN test accuracy (%) — {dataset}"),
                setting: setting.clone(),
                row: vec![cell.clone(), split.clone()],
                column: column.clone(),
                seed: seed_of(rec),
                value: acc,
                source: source.into(),
            });
        }
    }
    out
}

fn names(v: &Value) -> String {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.get("name").map(s).unwrap_or_else(|| s(x)))
            .collect::<Vec<_>>()
            .join(","),
        other => s(other),
    }
}

fn extract_fairness(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let m = &c["model"];
    let model = m["origin"]["id"]
        .as_str()
        .filter(|x| !x.is_empty())
        .map(String::from)
        .or_else(|| m["path"].as_str().map(short_id))
        .or_else(|| m["origin"]["path"].as_str().map(short_id))
        .unwrap_or_else(|| s(&m["kind"]));
    let setting = vec![
        ("model".to_string(), model.clone()),
        (
            "samples per demographic".into(),
            s(&c["samples_per_demographic"]),
        ),
        ("top-k".into(), s(&c["top_k"])),
        ("max new tokens".into(), s(&c["max_new_tokens"])),
    ];
    let axes = names(&c["axes"]);
    let contexts = names(&c["contexts"]);
    let mut out = Vec::new();
    if let Some(ms) = rec["metrics"]["methods"].as_object() {
        for (method, v) in ms {
            let Some(x) = v["swap_consistency"].as_f64() else {
                continue;
            };
            out.push(Obs {
                family: Family::Fairness,
                title: format!("Fairness: swap consistency — {}", short_id(&model)),
                setting: setting.clone(),
                row: vec![axes.clone(), contexts.clone()],
                column: method.clone(),
                seed: seed_of(rec),
                value: x,
                source: source.into(),
            });
        }
    }
    out
}

/// Per (zero-shot / finetuned, upright / corrupted test images) and method.
fn extract_cnn(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let group = s(&c["group"]["name"]);
    let transform = s(&c["transform"]["name"]);
    let setting = vec![
        ("group".to_string(), group.clone()),
        ("corruption".into(), transform.clone()),
        (
            "finetune".into(),
            format!(
                "{}×{} iterations, batch {}, {} lr {}",
                s(&c["finetune"]["schedule"]["rounds"]),
                s(&c["finetune"]["schedule"]["iters_per_round"]),
                s(&c["finetune"]["batch_size"]),
                s(&c["finetune"]["schedule"]["optim"]["kind"]),
                s(&c["finetune"]["schedule"]["optim"]["lr"])
            ),
        ),
    ];
    let title = format!("CNN on Fashion-MNIST — group {group}, corruption {transform}");
    let mut out = Vec::new();
    let m = &rec["metrics"];
    if let Some(x) = m["pretrained"]["test_upright_accuracy"].as_f64() {
        out.push(Obs {
            family: Family::Cnn,
            title: title.clone(),
            setting: setting.clone(),
            row: vec!["pretrained".into(), "upright".into()],
            column: "vanilla".into(),
            seed: seed_of(rec),
            value: x,
            source: source.into(),
        });
    }
    for (stage, key) in [("zero-shot", "zero_shot"), ("finetuned", "finetuned")] {
        for (method, v) in m[key].as_object().into_iter().flatten() {
            let t = if key == "finetuned" { &v["test"] } else { v };
            for (set, label) in [
                ("upright", "upright".to_string()),
                (transform.as_str(), transform.clone()),
            ] {
                let Some(x) = t[set].as_f64() else { continue };
                out.push(Obs {
                    family: Family::Cnn,
                    title: title.clone(),
                    setting: setting.clone(),
                    row: vec![stage.into(), label.clone()],
                    column: method.clone(),
                    seed: seed_of(rec),
                    value: x,
                    source: source.into(),
                });
            }
        }
    }
    out
}

/// Per (k, upright / rotated test tuples) and model: test accuracy at the validation-selected epoch.
fn extract_multi_image(rec: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let setting = vec![
        ("train images".to_string(), s(&c["train_images"])),
        ("epochs".into(), s(&c["epochs"])),
        ("lr".into(), s(&c["optimizer"]["lr"])),
        ("fusion".into(), s(&c["fusion_form"])),
    ];
    let mut out = Vec::new();
    for (model, m) in rec["metrics"]["models"].as_object().into_iter().flatten() {
        for (key, label) in [
            ("test_upright", "upright"),
            ("test_rotated", "rotated per view"),
        ] {
            let Some(x) = m[key].as_f64() else { continue };
            out.push(Obs {
                family: Family::MultiImage,
                title: "Multi-image Fashion-MNIST: test accuracy (%)".into(),
                setting: setting.clone(),
                row: vec![s(&c["k"]), label.into()],
                column: model.clone(),
                seed: seed_of(rec),
                value: x,
                source: source.into(),
            });
        }
    }
    out
}

/// Per (axis, context) and model/method: the largest total-variation distance between the
/// axis' demographics' regard label distributions.
fn extract_regard(rec: &Value, m: &Value, source: &str) -> Vec<Obs> {
    let c = &rec["config"];
    let scorer = c["regard"]["scorer"]["scorer"]
        .as_str()
        .or(c["scorer"]["scorer"].as_str())
        .unwrap_or("?")
        .to_string();
    let what = if rec["experiment"] == "regard-score" {
        // `…/<run>/seed-0.samples.tsv` reads better as `<run>/seed-0.samples.tsv`
        let input = c["input"].as_str().unwrap_or_default();
        let p = std::path::Path::new(input);
        match (p.file_name(), p.parent().and_then(|d| d.file_name())) {
            (Some(f), Some(d)) if f.to_string_lossy().starts_with("seed-") => {
                format!("{}/{}", d.to_string_lossy(), f.to_string_lossy())
            }
            _ => short_id(input),
        }
    } else {
        short_id(&s(&c["model"]["origin"]["id"]))
    };
    let setting = vec![
        ("samples".to_string(), what.clone()),
        ("scorer".into(), scorer.clone()),
        (
            "bootstrap".into(),
            "point estimates; seeds = generation or bootstrap seeds".into(),
        ),
    ];
    let mut out = Vec::new();
    for a in m["axes"].as_array().into_iter().flatten() {
        let Some(x) = a["max_tvd"].as_f64() else {
            continue;
        };
        out.push(Obs {
            family: Family::Regard,
            title: format!(
                "Regard disparity (max TVD) — {} · {}",
                what,
                short_id(&scorer)
            ),
            setting: setting.clone(),
            row: vec![s(&a["axis"]), s(&a["context"])],
            column: s(&a["model"]),
            seed: seed_of(rec),
            value: x,
            source: source.into(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// aggregation

fn rank(v: &str) -> usize {
    const ORDER: [&str; 32] = [
        "pretrained",
        "vanilla",
        "equitune",
        "r-equitune",
        "equizero",
        "multi-equitune",
        "multi-equizero",
        "none",
        "rot90",
        "flip",
        "hflip",
        "vflip",
        "rot180",
        "rot90xflip",
        "rot90xhflip",
        "rnn",
        "gru",
        "lstm",
        "gender",
        "race",
        "orientation",
        "respect",
        "cnn",
        "cnn-aug",
        "multi-gcnn",
        "multi-gcnn-fusion",
        "product-gcnn",
        "lambda-equitune",
        "zero-shot",
        "finetuned",
        "upright",
        "rotated per view",
    ];
    let base = v
        .split(" (")
        .next()
        .unwrap_or(v)
        .split(" [")
        .next()
        .unwrap_or(v);
    ORDER.iter().position(|o| *o == base).unwrap_or(ORDER.len())
}

fn sort_key(v: &str) -> (usize, String) {
    (rank(v), v.to_string())
}

/// Finds result files: `seed-<n>.json` below `dir`, skipping hidden folders.
pub fn find_results(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let p = e.path();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if name
                .strip_prefix("seed-")
                .and_then(|r| r.strip_suffix(".json"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}

type CellKey = (Vec<String>, String);
type SeedValues = BTreeMap<u64, f64>;

/// Groups observations into tables (see the module docs).
pub fn aggregate(obs: &[Obs]) -> Vec<Table> {
    type Key = (Family, String, Vec<(String, String)>);
    let mut by_table: BTreeMap<Key, Vec<&Obs>> = BTreeMap::new();
    for o in obs {
        by_table
            .entry((o.family, o.title.clone(), o.setting.clone()))
            .or_default()
            .push(o);
    }
    let mut tables = Vec::new();
    let mut slugs: BTreeSet<String> = BTreeSet::new();
    for ((family, title, setting), os) in by_table {
        // (row, column) → source → seed → value
        let mut cells: BTreeMap<CellKey, BTreeMap<String, SeedValues>> = BTreeMap::new();
        for o in &os {
            cells
                .entry((o.row.clone(), o.column.clone()))
                .or_default()
                .entry(o.source.clone())
                .or_default()
                .insert(o.seed, o.value);
        }
        // merge sources that agree on every shared seed, else one column per source
        let mut merged: BTreeMap<CellKey, (SeedValues, Vec<String>)> = BTreeMap::new();
        for ((row, col), sources) in cells {
            let mut agree = true;
            let mut all: BTreeMap<u64, f64> = BTreeMap::new();
            for seeds in sources.values() {
                for (&seed, &v) in seeds {
                    if let Some(&old) = all.get(&seed) {
                        if (old - v).abs() > 1e-9 * (1.0 + old.abs()) {
                            agree = false;
                        }
                    }
                    all.insert(seed, v);
                }
            }
            if agree || sources.len() == 1 {
                merged.insert((row, col), (all, sources.keys().cloned().collect()));
            } else {
                for (src, seeds) in sources {
                    let run = src.rsplit('/').next().unwrap_or(&src).to_string();
                    merged.insert((row.clone(), format!("{col} [{run}]")), (seeds, vec![src]));
                }
            }
        }
        let mut rows: Vec<Vec<String>> = merged
            .keys()
            .map(|k| k.0.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        rows.sort_by_key(|r| r.iter().map(|x| sort_key(x)).collect::<Vec<_>>());
        let mut columns: Vec<String> = merged
            .keys()
            .map(|k| k.1.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        columns.sort_by_key(|c| sort_key(c));
        // reference seed set: the most common one (ties: more seeds, then smaller)
        let mut counts: BTreeMap<Vec<u64>, usize> = BTreeMap::new();
        for (seeds, _) in merged.values() {
            *counts.entry(seeds.keys().copied().collect()).or_default() += 1;
        }
        let reference: Vec<u64> = counts
            .iter()
            .max_by(|a, b| {
                a.1.cmp(b.1)
                    .then(a.0.len().cmp(&b.0.len()))
                    .then(b.0.cmp(a.0))
            })
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let refset: BTreeSet<u64> = reference.iter().copied().collect();
        let mut grid = vec![vec![None; columns.len()]; rows.len()];
        for ((row, col), (seeds, sources)) in &merged {
            let r = rows.iter().position(|x| x == row).unwrap();
            let c = columns.iter().position(|x| x == col).unwrap();
            let vals: Vec<f64> = seeds.values().copied().collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let std = (vals.len() > 1)
                .then(|| (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
            let have: BTreeSet<u64> = seeds.keys().copied().collect();
            grid[r][c] = Some(CellStats {
                mean,
                std,
                seeds: have.iter().copied().collect(),
                missing: refset.difference(&have).copied().collect(),
                extra: have.difference(&refset).copied().collect(),
                sources: sources.clone(),
            });
        }
        let base = crate::experiments::sweep::slug(&format!(
            "{}-{}",
            family.name(),
            setting
                .first()
                .map(|(_, v)| short_id(v))
                .unwrap_or_default()
        ))
        .replace('.', "-");
        let mut slug = base.clone();
        let mut k = 2;
        while !slugs.insert(slug.clone()) {
            slug = format!("{base}-{k}");
            k += 1;
        }
        tables.push(Table {
            family,
            title,
            setting,
            row_fields: family.row_fields().iter().map(|s| s.to_string()).collect(),
            rows,
            columns,
            cells: grid,
            reference_seeds: reference,
            slug,
        });
    }
    tables
}

// ---------------------------------------------------------------------------------------------
// output

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown of one table.
pub fn table_markdown(t: &Table) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## {}\n", t.title);
    let setting: Vec<String> = t.setting.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(
        md,
        "{}; seeds: {}\n",
        setting.join("; "),
        join(&t.reference_seeds, ", ")
    );
    let header: Vec<String> = t
        .row_fields
        .iter()
        .chain(&t.columns)
        .map(|h| md_escape(h))
        .collect();
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        t.row_fields
            .iter()
            .map(|_| "---|")
            .chain(t.columns.iter().map(|_| "---:|"))
            .collect::<String>()
    );
    for (r, row) in t.rows.iter().enumerate() {
        let mut fields: Vec<String> = row.iter().map(|x| md_escape(x)).collect();
        for c in 0..t.columns.len() {
            fields.push(match &t.cells[r][c] {
                Some(s) => t.format_cell(s),
                None => "—".into(),
            });
        }
        let _ = writeln!(md, "| {} |", fields.join(" | "));
    }
    let inc = t.incomplete_cells();
    if inc > 0 {
        let _ = writeln!(md, "\n⚠ {inc} incomplete cell(s): their seeds differ from the table's seed set ({}); rerun the sweep to fill them.", join(&t.reference_seeds, ", "));
    }
    md
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
        + "\n"
}

fn num(v: f64) -> String {
    format!("{v}")
}

/// The table as CSV, shaped like the Markdown: row fields, then mean, std, n, missing per column.
pub fn table_csv(t: &Table) -> String {
    let mut header: Vec<String> = t.row_fields.clone();
    for c in &t.columns {
        header.extend([
            format!("{c} mean"),
            format!("{c} std"),
            format!("{c} n"),
            format!("{c} missing seeds"),
        ]);
    }
    let mut out = csv_line(&header);
    for (r, row) in t.rows.iter().enumerate() {
        let mut f = row.clone();
        for c in 0..t.columns.len() {
            match &t.cells[r][c] {
                Some(s) => f.extend([
                    num(s.mean),
                    s.std.map(num).unwrap_or_default(),
                    s.seeds.len().to_string(),
                    join(&s.missing, " "),
                ]),
                None => f.extend([String::new(), String::new(), "0".into(), String::new()]),
            }
        }
        out += &csv_line(&f);
    }
    out
}

fn cells_csv(tables: &[Table]) -> String {
    let mut out = csv_line(
        &[
            "table",
            "family",
            "row",
            "column",
            "mean",
            "std",
            "n",
            "seeds",
            "missing_seeds",
            "extra_seeds",
            "complete",
            "sources",
        ]
        .map(String::from),
    );
    for t in tables {
        for (r, row) in t.rows.iter().enumerate() {
            for (c, col) in t.columns.iter().enumerate() {
                if let Some(s) = &t.cells[r][c] {
                    out += &csv_line(&[
                        t.slug.clone(),
                        t.family.name().into(),
                        row.join(" / "),
                        col.clone(),
                        num(s.mean),
                        s.std.map(num).unwrap_or_default(),
                        s.seeds.len().to_string(),
                        join(&s.seeds, " "),
                        join(&s.missing, " "),
                        join(&s.extra, " "),
                        s.complete().to_string(),
                        s.sources.join(" "),
                    ]);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// plots

const FONT: &str = "monospace";
const COLORS: [RGBColor; 8] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// Registers the embedded font (Hack Regular, MIT/Bitstream Vera, from crate `epaint_default_fonts`) once: plotters'
/// ab_glyph text needs no system fonts.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let _ = plotters::style::register_font(FONT, style, epaint_default_fonts::HACK_REGULAR);
        }
    });
}

struct Layout {
    w: u32,
    h: u32,
    group_w: u32,
    left: u32,
    top: u32,
    bottom: u32,
}

fn row_label_lines(t: &Table, row: &[String]) -> Vec<String> {
    row.iter()
        .enumerate()
        .map(|(i, v)| {
            if t.family == Family::Clip && i == 0 {
                short_id(v)
            } else {
                v.clone()
            }
        })
        .collect()
}

fn layout(t: &Table) -> Layout {
    let cols = t.columns.len().max(1) as u32;
    let longest = t
        .rows
        .iter()
        .flat_map(|r| row_label_lines(t, r))
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4) as u32;
    let group_w = (cols * 22 + 26).max(longest * 7 + 14);
    let left = 72;
    let legend_chars: u32 = t
        .columns
        .iter()
        .map(|c| c.chars().count() as u32 * 7 + 34)
        .sum();
    let title_w = t.title.chars().count() as u32 * 12;
    let w = (left + t.rows.len().max(1) as u32 * group_w + 24)
        .max(legend_chars + left + 24)
        .max(title_w + left + 24)
        .max(520);
    let legend_rows = (legend_chars / (w - left - 24).max(1)) + 1;
    let top = 48 + 20 * legend_rows;
    let bottom = 30 + 16 * t.row_fields.len() as u32;
    Layout {
        w,
        h: top + 300 + bottom,
        group_w,
        left,
        top,
        bottom,
    }
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Grouped bars (rows on the x axis, one bar per column) with ± std whiskers; incomplete cells
/// are drawn light with a `!` above.
fn draw_table<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    t: &Table,
    lay: &Layout,
) -> Result<()> {
    root.fill(&WHITE).map_err(pe)?;
    root.draw(&Text::new(
        t.title.clone(),
        (lay.left as i32, 10),
        (FONT, 20).into_font().color(&BLACK),
    ))
    .map_err(pe)?;
    // legend
    let (mut x, mut y) = (lay.left as i32, 40);
    for (c, col) in t.columns.iter().enumerate() {
        let wdt = col.chars().count() as i32 * 7 + 34;
        if x + wdt > lay.w as i32 - 10 {
            x = lay.left as i32;
            y += 20;
        }
        let color = COLORS[c % COLORS.len()];
        root.draw(&Rectangle::new(
            [(x, y + 2), (x + 14, y + 14)],
            color.filled(),
        ))
        .map_err(pe)?;
        root.draw(&Text::new(
            col.clone(),
            (x + 19, y + 1),
            (FONT, 14).into_font().color(&BLACK),
        ))
        .map_err(pe)?;
        x += wdt;
    }
    let n_rows = t.rows.len().max(1) as f64;
    let ymax = t.family.y_max();
    let plot = root.margin(lay.top, lay.bottom, 6, 12);
    let y_decimals = if ymax <= 1.0 { 1 } else { 0 };
    let mut chart = ChartBuilder::on(&plot)
        .y_label_area_size(lay.left)
        .build_cartesian_2d(0f64..n_rows, 0f64..ymax)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(t.family.y_label())
        .y_label_formatter(&|v| format!("{v:.y_decimals$}"))
        .y_label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(pe)?;
    let cols = t.columns.len().max(1) as f64;
    let bw = 0.8 / cols;
    let mut marks = Vec::new();
    for (r, _) in t.rows.iter().enumerate() {
        for (c, _) in t.columns.iter().enumerate() {
            let Some(s) = &t.cells[r][c] else { continue };
            let x0 = r as f64 + 0.1 + c as f64 * bw;
            let x1 = x0 + bw * 0.92;
            let color = COLORS[c % COLORS.len()];
            let v = s.mean.clamp(0.0, ymax);
            if s.complete() {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, v)],
                        color.filled(),
                    )))
                    .map_err(pe)?;
            } else {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, v)],
                        color.mix(0.3).filled(),
                    )))
                    .map_err(pe)?;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, v)],
                        color.stroke_width(1),
                    )))
                    .map_err(pe)?;
                marks.push(((x0 + x1) / 2.0, (v + s.std.unwrap_or(0.0)).min(ymax)));
            }
            // the value above the bar when it fits
            let label = format!("{:.d$}", s.mean, d = t.family.decimals());
            let (px0, _) = chart.backend_coord(&(x0, 0.0));
            let (px1, _) = chart.backend_coord(&(x1, 0.0));
            if (px1 - px0) as f64 >= label.len() as f64 * 6.6 + 2.0 {
                let top = (s.mean + s.std.unwrap_or(0.0)).min(ymax);
                let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, top));
                let lf = (FONT, 11)
                    .into_font()
                    .color(&RGBColor(40, 40, 40))
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                let py = if s.complete() { py - 2 } else { py - 16 };
                root.draw(&Text::new(label, (px, py), lf)).map_err(pe)?;
            }
            if let Some(sd) = s.std {
                let xm = (x0 + x1) / 2.0;
                let (lo, hi) = ((s.mean - sd).max(0.0), (s.mean + sd).min(ymax));
                let cap = bw * 0.2;
                for seg in [
                    vec![(xm, lo), (xm, hi)],
                    vec![(xm - cap, lo), (xm + cap, lo)],
                    vec![(xm - cap, hi), (xm + cap, hi)],
                ] {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            seg,
                            BLACK.stroke_width(1),
                        )))
                        .map_err(pe)?;
                }
            }
        }
    }
    // x axis line and row labels
    let (ax0, ay) = chart.backend_coord(&(0.0, 0.0));
    let (ax1, _) = chart.backend_coord(&(n_rows, 0.0));
    root.draw(&PathElement::new(
        vec![(ax0, ay), (ax1, ay)],
        BLACK.stroke_width(1),
    ))
    .map_err(pe)?;
    let label_font = (FONT, 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (r, row) in t.rows.iter().enumerate() {
        let (cx, _) = chart.backend_coord(&(r as f64 + 0.5, 0.0));
        for (i, line) in row_label_lines(t, row).into_iter().enumerate() {
            root.draw(&Text::new(
                line,
                (cx, ay + 6 + 16 * i as i32),
                label_font.clone(),
            ))
            .map_err(pe)?;
        }
    }
    let mark_font = (FONT, 14)
        .into_font()
        .color(&RED)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (x, y) in marks {
        let p = chart.backend_coord(&(x, y));
        root.draw(&Text::new("!", (p.0, p.1 - 2), mark_font.clone()))
            .map_err(pe)?;
    }
    let note = if t.incomplete_cells() > 0 {
        "bars: mean, whiskers: ± std over seeds; light bars with ! = incomplete seeds"
    } else {
        "bars: mean, whiskers: ± std over seeds"
    };
    root.draw(&Text::new(
        note,
        (lay.left as i32, lay.h as i32 - 18),
        (FONT, 12).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(pe)?;
    root.present().map_err(pe)?;
    let _ = lay.group_w;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` of a table.
pub fn plot_table(t: &Table, dir: &Path) -> Result<Vec<PathBuf>> {
    let lay = layout(t);
    write_svg_png(
        dir,
        &t.slug,
        (lay.w, lay.h),
        |root| draw_table(&root, t, &lay),
        |root| draw_table(&root, t, &lay),
    )
}

pub(crate) const PLOT_FONT: &str = FONT;

/// Renders one figure twice (SVG text, RGB bitmap) and writes `<dir>/<slug>.svg` and
/// `<dir>/<slug>.png` atomically; both closures draw the same figure on their backend.
pub(crate) fn write_svg_png(
    dir: &Path,
    slug: &str,
    (w, h): (u32, u32),
    draw_svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    register_font();
    let svg = dir.join(format!("{slug}.svg"));
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
        draw_svg(root).with_context(|| format!("plotting {}", svg.display()))?;
    }
    crate::output::write_bytes_atomic(&svg, text.as_bytes())?;
    let png = dir.join(format!("{slug}.png"));
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw_png(root).with_context(|| format!("plotting {}", png.display()))?;
    }
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("bitmap size mismatch"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("encoding {}", png.display()))?;
    crate::output::write_bytes_atomic(&png, &bytes)?;
    Ok(vec![svg, png])
}

// ---------------------------------------------------------------------------------------------

/// Reads every `seed-<n>.json` below `results_dir` and writes `report.md`, `cells.csv`, and per
/// table `<slug>.csv`, `<slug>.svg`, `<slug>.png` into `out_dir`.
pub fn report(results_dir: &Path, out_dir: &Path) -> Result<Report> {
    if !results_dir.is_dir() {
        anyhow::bail!("{} is not a folder of results", results_dir.display());
    }
    let files = find_results(results_dir);
    let mut obs = Vec::new();
    let mut warnings = Vec::new();
    let mut records = 0;
    let out_abs = std::fs::canonicalize(out_dir).ok();
    for f in &files {
        if out_abs.is_some()
            && f.parent()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .is_some_and(|p| Some(&p) == out_abs.as_ref())
        {
            continue;
        }
        let rec: Value = match std::fs::read_to_string(f)
            .map_err(anyhow::Error::from)
            .and_then(|t| serde_json::from_str(&t).map_err(Into::into))
        {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!("{}: unreadable ({e})", f.display()));
                continue;
            }
        };
        let run = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let source = format!("{}/{run}", rec["experiment"].as_str().unwrap_or("?"));
        match extract(&rec, &source) {
            Some(o) => {
                records += 1;
                obs.extend(o);
            }
            None => warnings.push(format!(
                "{}: experiment {:?} is not covered by the report",
                f.display(),
                rec["experiment"]
            )),
        }
    }
    let tables = aggregate(&obs);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut md = String::from("# equirun results\n\n");
    let _ = writeln!(
        md,
        "{records} result files from `{}`. Cells: mean ± sample standard deviation (n − 1) over seeds; ⚠ marks a cell whose seeds differ from its table's seed set.\n",
        results_dir.display()
    );
    let mut written = Vec::new();
    for t in &tables {
        md += &table_markdown(t);
        let csv = out_dir.join(format!("{}.csv", t.slug));
        std::fs::write(&csv, table_csv(t))?;
        written.push(csv);
        let plots = plot_table(t, out_dir)?;
        let _ = writeln!(
            md,
            "\n![{}]({})\n",
            t.title,
            plots[1].file_name().unwrap().to_string_lossy()
        );
        written.extend(plots);
    }
    if tables.is_empty() {
        md += "No results found.\n";
    }
    if !warnings.is_empty() {
        md += "\n## Skipped files\n\n";
        for w in &warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    let cells = out_dir.join("cells.csv");
    std::fs::write(&cells, cells_csv(&tables))?;
    written.push(cells);
    let mdp = out_dir.join("report.md");
    std::fs::write(&mdp, &md)?;
    written.insert(0, mdp);
    Ok(Report {
        tables,
        markdown: md,
        files: written,
        records,
        warnings,
    })
}

/// `equirun report RESULTS_DIR`.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Results root (<dir>/<experiment>/<run>/seed-<n>.json).
    #[arg(default_value = "results")]
    pub results_dir: PathBuf,
    /// Output folder (default: <RESULTS_DIR>/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Entry point of `equirun report`: prints the Markdown, lists the files on stderr.
pub fn run(a: &ReportArgs) -> Result<i32> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.results_dir.join("report"));
    let r = report(&a.results_dir, &out)?;
    print!("{}", r.markdown);
    let incomplete: usize = r.tables.iter().map(Table::incomplete_cells).sum();
    eprintln!(
        "{} result files, {} tables ({incomplete} incomplete cells) -> {}",
        r.records,
        r.tables.len(),
        out.display()
    );
    for f in &r.files {
        eprintln!("  {}", f.display());
    }
    Ok(0)
}
