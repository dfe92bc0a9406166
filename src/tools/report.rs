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
//! is split into one column per run folder (`method [run]`). What a result file contributes is
//! its experiment's `extract` (`src/experiments/registry.rs`).

use super::plot::{write_svg_png, FONT};
use super::table::{short_id, Family, Obs};
use crate::experiments::REGISTRY;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

// ---------------------------------------------------------------------------------------------
// extraction: each experiment's own `extract`, found through the registry

/// The observations of one result file; `None` for an experiment the report does not tabulate.
pub fn extract(rec: &Value, source: &str) -> Option<Vec<Obs>> {
    let name = rec.get("experiment")?.as_str()?;
    let f = REGISTRY.iter().find(|e| e.name == name)?.extract?;
    Some(f(rec, source))
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
        let base = super::sweep::slug(&format!(
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
    // per-example tables from seed-<n>.predictions.jsonl.gz beside a result file
    let mut per_example: Vec<(String, crate::experiments::predictions::Summary)> = Vec::new();
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
        let pf = crate::experiments::predictions::predictions_path(f);
        if pf.is_file() {
            match crate::experiments::predictions::read_jsonl_gz(&pf)
                .and_then(|(h, rows)| crate::experiments::predictions::summarize(&h, &rows))
            {
                Ok(s) => per_example.push((source.clone(), s)),
                Err(e) => warnings.push(format!("{}: {e:#}", pf.display())),
            }
        }
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
    if !per_example.is_empty() {
        md += "\n## Per-example tables (from predictions files)\n\n";
        let mut csv = String::from("source,seed,table,row,column,count,n,percent\n");
        for (source, s) in &per_example {
            md += &s.markdown(source);
            for l in s.csv_rows(source) {
                csv += &l;
                csv.push('\n');
            }
        }
        let p = out_dir.join("per_example.csv");
        std::fs::write(&p, csv)?;
        written.push(p);
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
    #[arg(long = "report-dir", alias = "out")]
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
