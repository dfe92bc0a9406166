//! What `equirun report` tabulates: one [`Obs`] per number, grouped into tables by [`Family`]
//! (the table layout). Each experiment turns its result JSON into observations itself
//! (`Experiment::extract` in the registry, `src/experiments/registry.rs`).

use serde_json::Value;

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
    /// CLIP finetuned through the wrappers: zero-shot and finetuned top-1.
    ClipFinetune,
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
            Family::ClipFinetune => "clip-finetune",
            Family::Scan => "scan",
            Family::Fairness => "fairness",
            Family::Regard => "regard",
            Family::MultiImage => "multi-image",
            Family::Cnn => "cnn",
        }
    }
    pub fn row_fields(&self) -> &'static [&'static str] {
        match self {
            Family::Clip => &["model", "transform"],
            Family::ClipFinetune => &["model", "stage"],
            Family::Scan => &["cell", "test split"],
            Family::Fairness => &["axes", "contexts"],
            Family::Regard => &["axis", "context"],
            Family::MultiImage => &["k", "test tuples"],
            Family::Cnn => &["stage", "test images"],
        }
    }
    pub fn decimals(&self) -> usize {
        match self {
            Family::Fairness | Family::Regard => 3,
            _ => 2,
        }
    }
    pub fn y_max(&self) -> f64 {
        match self {
            Family::Fairness | Family::Regard => 1.0,
            _ => 100.0,
        }
    }
    pub fn y_label(&self) -> &'static str {
        match self {
            Family::Clip => "top-1 accuracy (%)",
            Family::ClipFinetune => "top-1 accuracy (%)",
            Family::Scan => "test accuracy (%)",
            Family::Fairness => "swap consistency",
            Family::Regard => "max TVD of regard labels",
            Family::MultiImage => "test accuracy (%)",
            Family::Cnn => "test accuracy (%)",
        }
    }
}

/// A JSON value as table text (`null` → `none`).
pub fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// The last path segment of an id or path.
pub fn short_id(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .to_string()
}

/// The record's seed.
pub fn seed_of(rec: &Value) -> u64 {
    rec["seed"].as_u64().unwrap_or(0)
}

/// A list of names (or of objects with a `name`) joined by commas.
pub fn names(v: &Value) -> String {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.get("name").map(s).unwrap_or_else(|| s(x)))
            .collect::<Vec<_>>()
            .join(","),
        other => s(other),
    }
}

/// A model's name in a table: its hub id, else its local path (`config.model` of a CLIP run).
pub fn model_name(m: &Value) -> String {
    m["id"]
        .as_str()
        .filter(|x| !x.is_empty())
        .map(String::from)
        .unwrap_or_else(|| s(&m["path"]))
}

/// A recorded group's name (`none` for no group).
pub fn group_name(g: &Value) -> String {
    if g.is_null() {
        "none".to_string()
    } else {
        s(&g["name"])
    }
}
