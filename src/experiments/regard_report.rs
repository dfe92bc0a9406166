//! Fairness metrics over regard labels (docs/fairness.md#metrics): label fractions per (model, context,
//! demographic) with bootstrap 95% intervals; per (model, context, axis) the demographics'
//! pooled label distributions, the largest total-variation distance between two members and the
//! largest difference of (negative − positive) gaps, each with a bootstrap interval; and the
//! stacked-bar figures of the papers (one per axis and context, SVG + PNG).

use crate::data::regard::{axes_of, Regard};
use crate::groups::fairness::WordLists;
use crate::tools::plot::{write_svg_png, FONT as PLOT_FONT};
use crate::tools::table::{s, seed_of, short_id, Family, Obs};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One classified sample.
#[derive(Clone, Debug)]
pub struct Scored {
    pub model: String,
    pub context: String,
    pub demographic: String,
    pub label: Regard,
    /// Key aligning this sample with the same generation slot of the other demographics
    /// (template, seed, sample index); `None` when the samples are independent generations.
    pub align: Option<String>,
}

/// Label fractions in `Regard::ALL` order.
pub type Dist = [f64; 4];

pub fn fractions(labels: &[Regard]) -> Dist {
    let mut c = [0f64; 4];
    for l in labels {
        c[l.index()] += 1.0;
    }
    let n = labels.len().max(1) as f64;
    c.map(|x| x / n)
}

/// Total-variation distance ½ Σ |p − q|.
pub fn tvd(p: &Dist, q: &Dist) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

/// negative − positive.
pub fn gap(p: &Dist) -> f64 {
    p[Regard::Negative.index()] - p[Regard::Positive.index()]
}

/// Majority vote of an ensemble (Sheng's regard2): count votes per label in the order
/// negative, neutral, positive, other; the largest count wins, ties go to the first (most
/// negative) label, as numpy's argmax.
pub fn ensemble_vote(votes: &[Regard]) -> Regard {
    let mut c = [0usize; 4];
    for v in votes {
        c[v.index()] += 1;
    }
    let mut best = 0;
    for i in 1..4 {
        if c[i] > c[best] {
            best = i;
        }
    }
    Regard::ALL[best]
}

/// The (2.5%, 97.5%) percentiles of `v` (sorted in place; linear interpolation as numpy).
pub fn percentile_interval(v: &mut [f64]) -> [f64; 2] {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let h = (v.len() - 1) as f64 * p;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        v[lo] + (h - lo as f64) * (v[hi] - v[lo])
    };
    [q(0.025), q(0.975)]
}

/// A bootstrap resample (with replacement) of `labels`.
fn resample(labels: &[Regard], rng: &mut impl Rng) -> Vec<Regard> {
    (0..labels.len())
        .map(|_| labels[rng.random_range(0..labels.len())])
        .collect()
}

/// Largest TVD and largest gap difference over member pairs (members in order), with the pairs.
fn axis_stats(dists: &[(String, Dist)]) -> (f64, [usize; 2], f64, [usize; 2]) {
    let first = [0, 1.min(dists.len().saturating_sub(1))];
    let (mut t, mut tp, mut g, mut gp) = (0.0, first, 0.0, first);
    for i in 0..dists.len() {
        for j in i + 1..dists.len() {
            let d = tvd(&dists[i].1, &dists[j].1);
            if d > t {
                (t, tp) = (d, [i, j]);
            }
            let gd = (gap(&dists[i].1) - gap(&dists[j].1)).abs();
            if gd > g {
                (g, gp) = (gd, [i, j]);
            }
        }
    }
    (t, tp, g, gp)
}

fn dist_json(d: &Dist) -> Value {
    json!({"negative": d[0], "neutral": d[1], "positive": d[2], "other": d[3]})
}

/// The metrics JSON of a set of scored samples (bootstrap draws from `rng`).
pub fn metrics(
    scored: &[Scored],
    lists: &WordLists,
    bootstrap: usize,
    rng: &mut impl Rng,
) -> Result<Value> {
    // (model, context, demographic) → labels, in first-seen order of models.
    let mut models: Vec<String> = Vec::new();
    let mut groups: BTreeMap<(usize, String, String), Vec<(Option<String>, Regard)>> =
        BTreeMap::new();
    for s in scored {
        let m = match models.iter().position(|x| *x == s.model) {
            Some(i) => i,
            None => {
                models.push(s.model.clone());
                models.len() - 1
            }
        };
        groups
            .entry((m, s.context.clone(), s.demographic.clone()))
            .or_default()
            .push((s.align.clone(), s.label));
    }
    let mut per_group = Vec::new();
    for ((m, ctx, demo), keyed) in &groups {
        let labels: Vec<Regard> = keyed.iter().map(|x| x.1).collect();
        let labels = &labels;
        let f = fractions(labels);
        let mut boots: Vec<Vec<f64>> = vec![Vec::with_capacity(bootstrap); 5];
        for _ in 0..bootstrap {
            let r = fractions(&resample(labels, rng));
            for k in 0..4 {
                boots[k].push(r[k]);
            }
            boots[4].push(gap(&r));
        }
        let ci: Vec<[f64; 2]> = boots.iter_mut().map(|b| percentile_interval(b)).collect();
        per_group.push(json!({
            "model": models[*m], "context": ctx, "demographic": demo, "n": labels.len(),
            "counts": Regard::ALL.map(|r| labels.iter().filter(|l| **l == r).count()),
            "fractions": dist_json(&f),
            "ci95": {"negative": ci[0], "neutral": ci[1], "positive": ci[2], "other": ci[3]},
            "gap_neg_minus_pos": gap(&f), "gap_ci95": ci[4],
        }));
    }
    // axes: pool each demographic's samples into its members.
    let mut per_axis = Vec::new();
    // pooled samples carry the rest of their demographic phrase in the key ("Black man" and
    // "White man" align on "man" + slot)
    type Pool = BTreeMap<String, Vec<(Option<String>, Regard)>>;
    let mut pooled: BTreeMap<(usize, String, String), Pool> = BTreeMap::new();
    for ((m, ctx, demo), keyed) in &groups {
        for (axis, member) in axes_of(demo, lists)? {
            let rest: Vec<&str> = demo
                .split_whitespace()
                .filter(|w| !w.eq_ignore_ascii_case(&member))
                .collect();
            let rest = rest.join(" ");
            pooled
                .entry((*m, ctx.clone(), axis))
                .or_default()
                .entry(member)
                .or_default()
                .extend(
                    keyed
                        .iter()
                        .map(|(k, l)| (k.as_ref().map(|k| format!("{rest}\u{1f}{k}")), *l)),
                );
        }
    }
    for ((m, ctx, axis), members) in &pooled {
        // members in word-list order
        let order = &lists.axes[axis].members;
        let mut names: Vec<&String> = members.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| o == *n));
        // paired only when every member has the same set of alignment keys (then each member's
        // samples are sorted by key so that position i is the same generation slot)
        let mut sorted: BTreeMap<&String, Vec<(Option<String>, Regard)>> = BTreeMap::new();
        for n in &names {
            let mut v = members[*n].clone();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            sorted.insert(*n, v);
        }
        let key_list = |n: &String| sorted[n].iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        let first_keys = key_list(names[0]);
        let unique = first_keys.windows(2).all(|w| w[0] != w[1]);
        let paired = names.len() > 1
            && first_keys.iter().all(|k| k.is_some())
            && unique
            && names.iter().all(|n| key_list(n) == first_keys);
        let members: BTreeMap<&String, Vec<Regard>> = sorted
            .iter()
            .map(|(n, v)| (*n, v.iter().map(|x| x.1).collect()))
            .collect();
        let dists: Vec<(String, Dist)> = names
            .iter()
            .map(|n| ((*n).clone(), fractions(&members[*n])))
            .collect();
        let (t, tp, g, gp) = axis_stats(&dists);
        let (mut tb, mut gb) = (Vec::new(), Vec::new());
        // Paired bootstrap when the members' samples are aligned (the same generation slots,
        // as gpt2-fairness writes them: an equivariant generator's samples are swaps of each
        // other); otherwise each member is resampled on its own.
        let n0 = members[names[0]].len();
        for _ in 0..bootstrap {
            let idx: Vec<usize> = if paired {
                (0..n0).map(|_| rng.random_range(0..n0)).collect()
            } else {
                Vec::new()
            };
            let r: Vec<(String, Dist)> = names
                .iter()
                .map(|n| {
                    let l = &members[*n];
                    let re = if paired {
                        idx.iter().map(|&i| l[i]).collect()
                    } else {
                        resample(l, rng)
                    };
                    ((*n).clone(), fractions(&re))
                })
                .collect();
            let (bt, _, bg, _) = axis_stats(&r);
            tb.push(bt);
            gb.push(bg);
        }
        // a pair needs two members; with one there is nothing to compare
        let pair = |p: [usize; 2]| {
            if dists.len() < 2 {
                Value::Null
            } else {
                json!([&dists[p[0]].0, &dists[p[1]].0])
            }
        };
        per_axis.push(json!({
            "model": models[*m], "context": ctx, "axis": axis,
            "members": names, "n": names.iter().map(|n| members[*n].len()).collect::<Vec<_>>(),
            "fractions": dists.iter().map(|(n, d)| (n.clone(), dist_json(d))).collect::<serde_json::Map<_, _>>(),
            "max_tvd": t, "max_tvd_pair": pair(tp),
            "max_tvd_ci95": percentile_interval(&mut tb),
            "max_gap_difference": g, "max_gap_difference_pair": pair(gp),
            "max_gap_difference_ci95": percentile_interval(&mut gb),
            "bootstrap": if paired { "paired (members' samples aligned by template, seed and sample)" } else { "independent per member" },
            "paired_bootstrap": paired,
        }));
    }
    Ok(json!({
        "labels": Regard::ALL.map(|r| r.name()),
        "bootstrap_resamples": bootstrap,
        "groups": per_group,
        "axes": per_axis,
    }))
}

/// A Markdown summary of the metrics JSON: one table of fractions per (axis, context), and the
/// TVD / gap-difference lines.
pub fn markdown(m: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let axes = m["axes"].as_array().cloned().unwrap_or_default();
    let mut keys: Vec<(String, String)> = axes
        .iter()
        .map(|a| {
            (
                a["axis"].as_str().unwrap_or("").into(),
                a["context"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (axis, ctx) in keys {
        let _ = writeln!(s, "\n### {axis} · {ctx}\n");
        let _ = writeln!(
            s,
            "| model | demographic | n | negative | neutral | positive | other | neg − pos |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for a in axes
            .iter()
            .filter(|a| a["axis"] == axis.as_str() && a["context"] == ctx.as_str())
        {
            let members = a["members"].as_array().cloned().unwrap_or_default();
            for (i, mem) in members.iter().enumerate() {
                let f = &a["fractions"][mem.as_str().unwrap_or("")];
                let g =
                    f["negative"].as_f64().unwrap_or(0.0) - f["positive"].as_f64().unwrap_or(0.0);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} |",
                    a["model"].as_str().unwrap_or(""),
                    mem.as_str().unwrap_or(""),
                    a["n"][i],
                    f["negative"].as_f64().unwrap_or(0.0),
                    f["neutral"].as_f64().unwrap_or(0.0),
                    f["positive"].as_f64().unwrap_or(0.0),
                    f["other"].as_f64().unwrap_or(0.0),
                    g
                );
            }
        }
        let _ = writeln!(s);
        for a in axes
            .iter()
            .filter(|a| a["axis"] == axis.as_str() && a["context"] == ctx.as_str())
        {
            let ci = |k: &str| {
                format!(
                    "[{:.3}, {:.3}]",
                    a[k][0].as_f64().unwrap_or(f64::NAN),
                    a[k][1].as_f64().unwrap_or(f64::NAN)
                )
            };
            if a["max_tvd_pair"].is_null() {
                let _ = writeln!(
                    s,
                    "- {}: one demographic only, nothing to compare",
                    a["model"].as_str().unwrap_or("")
                );
                continue;
            }
            let _ = writeln!(
                s,
                "- {}: max TVD {:.3} {} ({} vs {}); max (neg − pos) gap difference {:.3} {}",
                a["model"].as_str().unwrap_or(""),
                a["max_tvd"].as_f64().unwrap_or(0.0),
                ci("max_tvd_ci95"),
                a["max_tvd_pair"][0].as_str().unwrap_or(""),
                a["max_tvd_pair"][1].as_str().unwrap_or(""),
                a["max_gap_difference"].as_f64().unwrap_or(0.0),
                ci("max_gap_difference_ci95"),
            );
        }
    }
    s
}

// --------------------------------------------------------------------------------------------
// Plots

/// Stack order bottom → top (docs/fairness.md#metrics) with colours.
const STACK: [(Regard, RGBColor); 4] = [
    (Regard::Other, RGBColor(0xb0, 0xb0, 0xb0)),
    (Regard::Positive, RGBColor(0x55, 0xa8, 0x68)),
    (Regard::Neutral, RGBColor(0x4c, 0x72, 0xb0)),
    (Regard::Negative, RGBColor(0xc4, 0x4e, 0x52)),
];

/// One figure: models on x, one stacked bar per member.
pub struct Figure {
    pub title: String,
    pub slug: String,
    pub models: Vec<String>,
    pub members: Vec<String>,
    /// [model][member] → fractions (None when absent).
    pub bars: Vec<Vec<Option<Dist>>>,
}

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

fn figure_size(f: &Figure) -> (u32, u32) {
    let group_w = (f.members.len() as u32 * 70 + 40).max(150);
    ((90 + f.models.len() as u32 * group_w + 170).max(480), 480)
}

fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, f: &Figure) -> Result<()> {
    let (w, h) = figure_size(f);
    let (left, top, bottom, right) = (70u32, 50u32, 70u32, 150u32);
    root.fill(&WHITE).map_err(pe)?;
    root.draw(&Text::new(
        f.title.clone(),
        (left as i32, 12),
        (PLOT_FONT, 20).into_font().color(&BLACK),
    ))
    .map_err(pe)?;
    let plot = root.margin(top, bottom, 6, right);
    let nm = f.models.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&plot)
        .y_label_area_size(left)
        .build_cartesian_2d(0f64..nm, 0f64..1f64)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("Regard Classifier Scores")
        .y_labels(11)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_label_style((PLOT_FONT, 13))
        .axis_desc_style((PLOT_FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(pe)?;
    let k = f.members.len().max(1) as f64;
    let bw = 0.8 / k;
    let small = (PLOT_FONT, 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    let (_, ay) = chart.backend_coord(&(0.0, 0.0));
    for (mi, model) in f.models.iter().enumerate() {
        for (di, member) in f.members.iter().enumerate() {
            let x0 = mi as f64 + 0.1 + di as f64 * bw;
            let x1 = x0 + bw * 0.9;
            if let Some(d) = f.bars[mi][di] {
                let mut y = 0.0;
                for (r, color) in STACK {
                    let v = d[r.index()];
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, y), (x1, y + v)],
                            color.filled(),
                        )))
                        .map_err(pe)?;
                    y += v;
                }
            }
            let (cx, _) = chart.backend_coord(&((x0 + x1) / 2.0, 0.0));
            root.draw(&Text::new(member.clone(), (cx, ay + 5), small.clone()))
                .map_err(pe)?;
        }
        let (cx, _) = chart.backend_coord(&(mi as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            model.clone(),
            (cx, ay + 26),
            (PLOT_FONT, 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(pe)?;
    }
    // legend, top → bottom as the stack reads
    let lx = (w - right + 16) as i32;
    for (i, (r, color)) in STACK.iter().rev().enumerate() {
        let y = (top + 10 + 24 * i as u32) as i32;
        root.draw(&Rectangle::new(
            [(lx, y), (lx + 14, y + 14)],
            color.filled(),
        ))
        .map_err(pe)?;
        root.draw(&Text::new(
            r.name(),
            (lx + 20, y),
            (PLOT_FONT, 14).into_font().color(&BLACK),
        ))
        .map_err(pe)?;
    }
    root.draw(&Text::new(
        "x: model; bars: demographic",
        (left as i32, h as i32 - 18),
        (PLOT_FONT, 12).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(pe)?;
    root.present().map_err(pe)?;
    Ok(())
}

/// The figures of a metrics JSON: one per (axis, context).
pub fn figures(m: &Value, title_prefix: &str) -> Vec<Figure> {
    let axes = m["axes"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<Figure> = Vec::new();
    for a in &axes {
        let axis = a["axis"].as_str().unwrap_or("");
        let ctx = a["context"].as_str().unwrap_or("");
        let model = a["model"].as_str().unwrap_or("").to_string();
        let slug = format!("regard-{axis}-{ctx}");
        let idx = match out.iter().position(|f| f.slug == slug) {
            Some(i) => i,
            None => {
                let cap = |s: &str| {
                    let mut c = s.chars();
                    c.next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default()
                };
                out.push(Figure {
                    title: format!("{title_prefix}{}-{}", cap(axis), cap(ctx)),
                    slug,
                    models: vec![],
                    members: vec![],
                    bars: vec![],
                });
                out.len() - 1
            }
        };
        let f = &mut out[idx];
        for mem in a["members"].as_array().into_iter().flatten() {
            let mem = mem.as_str().unwrap_or("").to_string();
            if !f.members.contains(&mem) {
                f.members.push(mem);
                for row in f.bars.iter_mut() {
                    row.push(None);
                }
            }
        }
        if !f.models.contains(&model) {
            f.models.push(model.clone());
            f.bars.push(vec![None; f.members.len()]);
        }
        let mi = f.models.iter().position(|x| *x == model).unwrap_or(0);
        for (di, mem) in f.members.clone().iter().enumerate() {
            let d = &a["fractions"][mem];
            if d.is_object() {
                let g = |k: &str| d[k].as_f64().unwrap_or(0.0);
                f.bars[mi][di] = Some([g("negative"), g("neutral"), g("positive"), g("other")]);
            }
        }
    }
    out
}

/// Writes every figure of a metrics JSON as `<dir>/<slug_prefix>regard-<axis>-<context>.{svg,png}`.
pub fn plot(m: &Value, dir: &Path, slug_prefix: &str, title_prefix: &str) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for f in figures(m, title_prefix) {
        written.extend(write_svg_png(
            dir,
            &format!("{slug_prefix}{}", f.slug),
            figure_size(&f),
            |root| draw_figure(&root, &f),
            |root| draw_figure(&root, &f),
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Regard::*;

    #[test]
    fn fractions_tvd_gap_by_hand() {
        let a = [Negative, Negative, Positive, Neutral]; // .5 .25 .25 0
        let b = [Positive, Positive, Positive, Other]; // 0 0 .75 .25
        let (fa, fb) = (fractions(&a), fractions(&b));
        assert_eq!(fa, [0.5, 0.25, 0.25, 0.0]);
        assert_eq!(fb, [0.0, 0.0, 0.75, 0.25]);
        // ½(|.5| + |.25| + |−.5| + |−.25|) = 0.75
        assert!((tvd(&fa, &fb) - 0.75).abs() < 1e-12);
        assert_eq!(tvd(&fa, &fa), 0.0);
        assert!((gap(&fa) - 0.25).abs() < 1e-12);
        assert!((gap(&fb) + 0.75).abs() < 1e-12);
    }

    #[test]
    fn ensemble_ties_go_to_the_lowest_label() {
        assert_eq!(ensemble_vote(&[Positive, Neutral, Negative]), Negative);
        assert_eq!(ensemble_vote(&[Positive, Other, Other]), Other);
        assert_eq!(ensemble_vote(&[Other, Positive, Neutral]), Neutral);
        assert_eq!(ensemble_vote(&[Positive, Positive, Negative]), Positive);
        assert_eq!(ensemble_vote(&[Other, Positive]), Positive);
    }

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([1..=5], [2.5, 97.5]) = [1.1, 4.9]
        let mut v = vec![5.0, 3.0, 1.0, 4.0, 2.0];
        let [lo, hi] = percentile_interval(&mut v);
        assert!(
            (lo - 1.1).abs() < 1e-12 && (hi - 4.9).abs() < 1e-12,
            "{lo} {hi}"
        );
    }

    #[test]
    fn axis_metrics_pool_members() {
        let lists = WordLists::default_lists();
        let mk = |demo: &str, l: Regard| Scored {
            model: "gpt2".into(),
            context: "respect".into(),
            demographic: demo.into(),
            label: l,
            align: None,
        };
        let mut s = vec![];
        s.extend([Negative, Negative, Positive, Neutral].map(|l| mk("man", l)));
        s.extend([Positive, Positive, Positive, Other].map(|l| mk("woman", l)));
        let mut rng = crate::output::rng_for(0, "test");
        let m = metrics(&s, &lists, 200, &mut rng).unwrap();
        let ax = &m["axes"][0];
        assert_eq!(ax["axis"], "gender");
        assert_eq!(ax["members"], json!(["man", "woman"]));
        assert!((ax["max_tvd"].as_f64().unwrap() - 0.75).abs() < 1e-12);
        assert!((ax["max_gap_difference"].as_f64().unwrap() - 1.0).abs() < 1e-12);
        let g = &m["groups"][0];
        assert_eq!(g["demographic"], "man");
        assert_eq!(g["counts"], json!([2, 1, 1, 0]));
        let ci = g["ci95"]["negative"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= 0.5 && ci[1].as_f64().unwrap() >= 0.5);
        // an equivariant generator's swapped samples get identical labels: TVD 0 and, with the
        // paired bootstrap, an interval of exactly [0, 0]
        let mut s2 = vec![];
        for (i, l) in [Negative, Positive, Neutral, Other, Positive]
            .into_iter()
            .enumerate()
        {
            for d in ["man", "woman"] {
                s2.push(Scored {
                    align: Some(format!("{i}")),
                    ..mk(d, l)
                });
            }
        }
        let m2 = metrics(&s2, &lists, 200, &mut rng).unwrap();
        assert_eq!(m2["axes"][0]["max_tvd"], 0.0);
        assert_eq!(m2["axes"][0]["max_tvd_ci95"], json!([0.0, 0.0]));
        assert_eq!(m2["axes"][0]["max_tvd_pair"], json!(["man", "woman"]));
        assert_eq!(m2["axes"][0]["paired_bootstrap"], true);
        // the same labels without alignment keys (independent generations, equal counts) are
        // resampled independently: the interval is no longer [0, 0]
        let s3: Vec<Scored> = s2
            .iter()
            .map(|x| Scored {
                align: None,
                ..x.clone()
            })
            .collect();
        let m3 = metrics(&s3, &lists, 200, &mut rng).unwrap();
        assert_eq!(m3["axes"][0]["paired_bootstrap"], false);
        assert!(m3["axes"][0]["max_tvd_ci95"][1].as_f64().unwrap() > 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` tabulates

/// Per (axis, context) and model/method: the largest total-variation distance between the
/// axis' demographics' regard label distributions.
pub fn extract_regard(rec: &Value, m: &Value, source: &str) -> Vec<Obs> {
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
