//! `equirun sweep CONFIG`: a TOML grid × seeds → ordinary `equirun ...` command lines, run
//! locally with N parallel jobs (resumable after kill -9), or emitted as a Slurm job array /
//! a plain list for GNU parallel or xargs.
//!
//! # Config schema
//!
//! ```toml
//! name = "scan-ii"              # optional: default the file stem; names the default run folders
//! description = "..."           # optional, free text
//! out = "results"               # results root (every run gets --out OUT; `sweep --out` overrides)
//! seeds = [0, 1, 2]             # or "0-2"; every run gets --seeds
//! per_seed = true               # default: one run (one process, one array task) per seed;
//!                               # false: one run per grid point with --seeds 0,1,2
//!
//! [slurm]                       # optional: resources of the emitted sbatch scripts
//! time = "04:00:00"             # partition, account, qos, time, cpus_per_task, mem, gres,
//! cpus_per_task = 2             # job_name, array_limit (the `%` of --array), output,
//! mem = "8G"                    # extra = ["--sbatch-flag", ...], setup = ["shell line", ...]
//! array_limit = 16
//!
//! # Either one stage written at the top level (command, run_name, [args], [grid]) ...
//! # ... or ordered stages; stage k+1 starts when every run of stage k succeeded:
//! [[stage]]
//! name = "pretrain"
//! command = "scan pretrain"     # the equirun subcommand (string or list of words)
//! run_name = "scan-ii-{cell}"   # template; default: NAME-<grid values>
//! [stage.args]                  # fixed flags: key = value → --key value
//! dataset = "scan-ii"           #   true → bare --key, false → omitted, [a, b] → --key a,b
//! [stage.grid]                  # lists expand to the Cartesian product
//! cell = ["rnn", "gru", "lstm"] #   a table element sets several flags at once:
//!                               #   task = [{split = "add-jump", group = "verb"}, ...]
//! [stage.slurm]                 # optional per-stage overrides of [slurm]
//! ```
//!
//! Strings in `args`, grid values and `run_name` may use `{key}` placeholders: any flag of the
//! run (`{cell}`, `{data-dir}`; `_` and `-` are the same), `{out}`, `{name}`, `{stage}`; `{{`
//! is a literal brace. In `run_name` substituted values are slugged (last path segment,
//! characters outside `A-Za-z0-9._-` → `-`). Keys `seeds`, `out` and `run-name` are set by the
//! sweep itself. The result files of each run are known from the experiment registry
//! (`crate::experiments::REGISTRY`: `scan finetune` writes one folder per `--method`,
//! `multi-image` one per `--k`); another command needs `experiment = "..."` (its results folder)
//! and optionally `results = ["{run-name}-x"]`.
//!
//! # Local runs
//!
//! A run is done when all its result JSONs exist and a marker `OUT/.sweep/done/<id>.json`
//! records that this exact command line succeeded; a run whose JSONs exist without the marker is
//! executed anyway (the experiment itself then skips, or stops, when the file holds the same, or
//! another, config) so a changed config never passes silently. Each running command holds an
//! exclusive lock `OUT/.sweep/locks/<id>.lock` (handed to the child as its stdin, so it lasts as
//! long as the child, even if the sweep is killed), and a rerun waits for such orphans instead
//! of starting the same run twice. Before and after each stage, leftover `.tmp-*` files in
//! result folders that no live run holds are removed (SIGKILL between temp write and rename). Logs of
//! every run go to `OUT/.sweep/logs/NAME/`. With `--jobs N > 1`, runs other than `scan` get
//! `RAYON_NUM_THREADS = cores / N` unless it is set.

use crate::output;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// Sbatch resources; every field optional.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Slurm {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub gres: Option<String>,
    pub job_name: Option<String>,
    /// At most this many array tasks at once (`--array=0-N%LIMIT`).
    pub array_limit: Option<usize>,
    /// `--output` pattern (default `slurm-%x-%A_%a.out` in the submit folder).
    pub output: Option<String>,
    /// Extra `#SBATCH` flags, e.g. `["--constraint=avx2"]`.
    #[serde(default)]
    pub extra: Vec<String>,
    /// Shell lines run before the task's command (module loads, exports).
    #[serde(default)]
    pub setup: Vec<String>,
}

impl Slurm {
    fn merged(&self, over: &Slurm) -> Slurm {
        Slurm {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            qos: over.qos.clone().or_else(|| self.qos.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            gres: over.gres.clone().or_else(|| self.gres.clone()),
            job_name: over.job_name.clone().or_else(|| self.job_name.clone()),
            array_limit: over.array_limit.or(self.array_limit),
            output: over.output.clone().or_else(|| self.output.clone()),
            extra: self.extra.iter().chain(&over.extra).cloned().collect(),
            setup: self.setup.iter().chain(&over.setup).cloned().collect(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn words(&self) -> Vec<String> {
        match self {
            Words::One(s) => s.split_whitespace().map(String::from).collect(),
            Words::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Option<String>,
    command: Words,
    run_name: Option<String>,
    experiment: Option<String>,
    results: Option<Vec<String>>,
    seeds: Option<toml::Value>,
    #[serde(default)]
    args: toml::Table,
    #[serde(default)]
    grid: toml::Table,
    #[serde(default)]
    slurm: Slurm,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    description: Option<String>,
    out: Option<PathBuf>,
    seeds: Option<toml::Value>,
    per_seed: Option<bool>,
    #[serde(default)]
    slurm: Slurm,
    // single-stage shorthand
    command: Option<Words>,
    run_name: Option<String>,
    experiment: Option<String>,
    results: Option<Vec<String>>,
    args: Option<toml::Table>,
    grid: Option<toml::Table>,
    stage: Option<Vec<RawStage>>,
}

/// One stage: a command and its grid.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    /// Subcommand words, e.g. `["scan", "pretrain"]`.
    pub command: Vec<String>,
    pub run_name: Option<String>,
    pub experiment: Option<String>,
    pub results: Option<Vec<String>>,
    pub seeds: Vec<u64>,
    /// Fixed flags (kebab-case keys).
    pub args: Vec<(String, toml::Value)>,
    /// Grid axes (kebab-case keys) with their values.
    pub grid: Vec<(String, Vec<toml::Value>)>,
    pub slurm: Slurm,
}

/// A parsed sweep config.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    pub name: String,
    pub description: Option<String>,
    /// Results root passed as `--out` to every run.
    pub out: PathBuf,
    pub per_seed: bool,
    pub stages: Vec<Stage>,
}

/// One expanded run: an ordinary `equirun` command line and the result JSONs it must write.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Position in the whole sweep (0-based).
    pub index: usize,
    /// Position within its stage (0-based): the Slurm array index.
    pub stage_index: usize,
    pub stage: String,
    /// Arguments after the binary.
    pub args: Vec<String>,
    pub experiment: String,
    pub run_name: String,
    pub seeds: Vec<u64>,
    /// `<out>/<experiment>/<folder>/seed-<n>.json` for every result folder and seed.
    pub results: Vec<PathBuf>,
}

impl Run {
    /// Stable id of the command line (12 hex digits).
    pub fn id(&self) -> String {
        output::short_hash(&json!(self.args))
    }
    /// The shell-quoted command line.
    pub fn command_line(&self, binary: &Path) -> String {
        std::iter::once(binary.display().to_string())
            .chain(self.args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// What to print for this run.
    pub fn label(&self) -> String {
        let seeds = self
            .seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",");
        format!("{}/{} seed {}", self.experiment, self.run_name, seeds)
    }
}

/// Quotes a word for POSIX shells when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn kebab(k: &str) -> String {
    k.trim().replace('_', "-")
}

fn parse_seed_value(v: &toml::Value, what: &str) -> Result<Vec<u64>> {
    match v {
        toml::Value::String(s) => output::parse_seeds(s),
        toml::Value::Integer(i) if *i >= 0 => Ok(vec![*i as u64]),
        toml::Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                match x {
                    toml::Value::Integer(i) if *i >= 0 => out.push(*i as u64),
                    _ => bail!(
                        "{what}: seeds must be non-negative integers, e.g. [0, 1, 2] or \"0-2\""
                    ),
                }
            }
            if out.is_empty() {
                bail!("{what}: empty seed list");
            }
            Ok(out)
        }
        _ => bail!("{what}: seeds must be a list like [0, 1, 2] or a string like \"0-2\""),
    }
}

/// Flags the sweep sets on every run (`seed` is the old spelling of `--seeds`).
const RESERVED: [&str; 4] = ["seeds", "seed", "out", "run-name"];

fn table_pairs(t: &toml::Table, what: &str) -> Result<Vec<(String, toml::Value)>> {
    let mut out: Vec<(String, toml::Value)> = Vec::new();
    for (k, v) in t {
        let k = kebab(k);
        if RESERVED.contains(&k.as_str()) {
            bail!("{what}: `{k}` is set by the sweep itself (use the config's top-level seeds / out / run_name)");
        }
        if out.iter().any(|(o, _)| *o == k) {
            bail!("{what}: `{k}` given twice (`_` and `-` are the same)");
        }
        out.push((k, v.clone()));
    }
    Ok(out)
}

impl SweepConfig {
    /// Reads a config file; its stem is the default sweep name.
    pub fn from_file(path: &Path) -> Result<SweepConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sweep config {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "sweep".into());
        SweepConfig::parse(&text, &stem)
            .with_context(|| format!("in sweep config {}", path.display()))
    }

    /// Parses config text; `default_name` is used when the file has no `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<SweepConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let name = raw.name.unwrap_or_else(|| default_name.to_string());
        if name.is_empty() || name.contains('/') {
            bail!("sweep name '{name}' must be a non-empty single path component");
        }
        let seeds = match &raw.seeds {
            Some(v) => parse_seed_value(v, "seeds")?,
            None => vec![0],
        };
        let mut raw_stages = raw.stage.unwrap_or_default();
        if let Some(command) = raw.command {
            if !raw_stages.is_empty() {
                bail!(
                    "give either a top-level `command` (one stage) or [[stage]] tables, not both"
                );
            }
            raw_stages.push(RawStage {
                name: None,
                command,
                run_name: raw.run_name,
                experiment: raw.experiment,
                results: raw.results,
                seeds: None,
                args: raw.args.unwrap_or_default(),
                grid: raw.grid.unwrap_or_default(),
                slurm: Slurm::default(),
            });
        } else if raw.run_name.is_some()
            || raw.args.is_some()
            || raw.grid.is_some()
            || raw.experiment.is_some()
            || raw.results.is_some()
        {
            bail!("top-level run_name / args / grid / experiment / results need a top-level `command` (or move them into a [[stage]])");
        }
        if raw_stages.is_empty() {
            bail!("no command: give `command = \"clip\"` (one stage) or [[stage]] tables");
        }
        let n_stages = raw_stages.len();
        let mut stages = Vec::new();
        for (si, rs) in raw_stages.into_iter().enumerate() {
            let sname = rs.name.unwrap_or_else(|| {
                if n_stages == 1 {
                    "runs".into()
                } else {
                    format!("stage{}", si + 1)
                }
            });
            if sname.is_empty()
                || sname.contains('/')
                || stages.iter().any(|s: &Stage| s.name == sname)
            {
                bail!("stage name '{sname}' must be unique and a single path component");
            }
            let what = format!("stage '{sname}'");
            let command = rs.command.words();
            if command.is_empty() {
                bail!("{what}: empty command");
            }
            let args = table_pairs(&rs.args, &format!("{what} args"))?;
            let mut grid = Vec::new();
            for (k, v) in table_pairs(&rs.grid, &format!("{what} grid"))? {
                let values = match v {
                    toml::Value::Array(a) if !a.is_empty() => a,
                    toml::Value::Array(_) => bail!("{what} grid: `{k}` is an empty list"),
                    _ => bail!(
                        "{what} grid: `{k}` must be a list of values (put single values in args)"
                    ),
                };
                if args.iter().any(|(a, _)| *a == k) {
                    bail!("{what}: `{k}` is both in args and in the grid");
                }
                grid.push((k, values));
            }
            let seeds = match &rs.seeds {
                Some(v) => parse_seed_value(v, &format!("{what} seeds"))?,
                None => seeds.clone(),
            };
            stages.push(Stage {
                name: sname,
                command,
                run_name: rs.run_name,
                experiment: rs.experiment,
                results: rs.results,
                seeds,
                args,
                grid,
                slurm: raw.slurm.merged(&rs.slurm),
            });
        }
        Ok(SweepConfig {
            name,
            description: raw.description,
            out: raw.out.unwrap_or_else(|| PathBuf::from("results")),
            per_seed: raw.per_seed.unwrap_or(true),
            stages,
        })
    }
}

fn value_string(v: &toml::Value, key: &str) -> Result<Option<String>> {
    Ok(match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(true) => Some(String::new()),
        toml::Value::Boolean(false) => None,
        toml::Value::Array(a) => {
            let mut parts = Vec::new();
            for x in a {
                match value_string(x, key)? {
                    Some(s) if !s.is_empty() => parts.push(s),
                    _ => bail!("`{key}`: list elements must be strings or numbers"),
                }
            }
            Some(parts.join(","))
        }
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Table(_) => bail!("`{key}`: a table is only allowed as a grid element"),
    })
}

/// Slug of a value for run folder names.
pub fn slug(s: &str) -> String {
    let last = s.trim_end_matches('/').rsplit('/').next().unwrap_or(s);
    let mut out = String::new();
    for c in last.chars() {
        let c = if c.is_ascii_alphanumeric() || "._-".contains(c) {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "x".into()
    } else {
        out
    }
}

/// Replaces `{key}` placeholders (`{{` / `}}` are literal braces).
fn substitute(
    template: &str,
    vars: &BTreeMap<String, String>,
    slugged: bool,
    what: &str,
) -> Result<String> {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(k) => key.push(k),
                        None => bail!("{what}: unclosed '{{' in \"{template}\""),
                    }
                }
                let k = kebab(&key);
                let v = vars.get(&k).ok_or_else(|| {
                    anyhow!(
                        "{what}: unknown placeholder {{{key}}} in \"{template}\"; known: {}",
                        vars.keys()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                })?;
                out.push_str(&if slugged { slug(v) } else { v.clone() });
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn substitute_value(
    v: &toml::Value,
    vars: &BTreeMap<String, String>,
    what: &str,
) -> Result<toml::Value> {
    Ok(match v {
        toml::Value::String(s) => toml::Value::String(substitute(s, vars, false, what)?),
        toml::Value::Array(a) => toml::Value::Array(
            a.iter()
                .map(|x| substitute_value(x, vars, what))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Result folders (under `<out>/<experiment>/`) of a command the registry knows.
fn known_results(
    command: &[String],
    flags: &[(String, toml::Value)],
    run_name: &str,
) -> Result<Option<(String, Vec<String>)>> {
    let words: Vec<&str> = command.iter().map(String::as_str).collect();
    let Some(e) = crate::experiments::registry::by_words(&words) else {
        return Ok(None);
    };
    let flag = |k: &str| -> Result<Option<String>> {
        match flags.iter().find(|(key, _)| key == k) {
            Some((key, v)) => value_string(v, key),
            None => Ok(None),
        }
    };
    Ok(Some((
        e.name.to_string(),
        (e.run_folders)(&flag, run_name)?,
    )))
}

/// Expands every stage's grid × seeds into runs, in order.
pub fn expand(cfg: &SweepConfig) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let out_s = cfg.out.display().to_string();
    for stage in &cfg.stages {
        let what = format!("stage '{}'", stage.name);
        let sizes: Vec<usize> = stage.grid.iter().map(|(_, v)| v.len()).collect();
        let total: usize = sizes.iter().product();
        let mut stage_index = 0;
        for point in 0..total {
            // mixed-radix digits, last axis fastest
            let mut digits = vec![0; sizes.len()];
            let mut rest = point;
            for i in (0..sizes.len()).rev() {
                digits[i] = rest % sizes[i];
                rest /= sizes[i];
            }
            // flags: fixed args, then the grid point's (tables set several flags)
            let mut flags: Vec<(String, toml::Value)> = stage.args.clone();
            let mut name_parts: Vec<String> = Vec::new();
            for (ai, (key, values)) in stage.grid.iter().enumerate() {
                match &values[digits[ai]] {
                    toml::Value::Table(t) => {
                        let mut parts = Vec::new();
                        for (k, v) in table_pairs(t, &format!("{what} grid `{key}`"))? {
                            if flags.iter().any(|(f, _)| *f == k) {
                                bail!("{what}: grid `{key}` sets `{k}`, which is already set");
                            }
                            parts.push(slug(&value_string(&v, &k)?.unwrap_or_else(|| "no".into())));
                            flags.push((k, v));
                        }
                        name_parts.push(parts.join("-"));
                    }
                    v => {
                        name_parts
                            .push(slug(&value_string(v, key)?.unwrap_or_else(|| "no".into())));
                        flags.push((key.clone(), v.clone()));
                    }
                }
            }
            let mut vars: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in &flags {
                if let Some(s) = value_string(v, k)? {
                    vars.insert(k.clone(), s);
                }
            }
            vars.insert("out".into(), out_s.clone());
            vars.insert("name".into(), cfg.name.clone());
            vars.insert("stage".into(), stage.name.clone());
            let flags: Vec<(String, toml::Value)> = flags
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        substitute_value(v, &vars, &format!("{what} `{k}`"))?,
                    ))
                })
                .collect::<Result<_>>()?;
            let run_name = match &stage.run_name {
                Some(t) => substitute(t, &vars, true, &format!("{what} run_name"))?,
                None => std::iter::once(cfg.name.clone())
                    .chain(name_parts)
                    .collect::<Vec<_>>()
                    .join("-"),
            };
            if run_name.is_empty() || run_name.contains('/') || run_name.starts_with('.') {
                bail!("{what}: run name '{run_name}' must be a single path component not starting with '.'");
            }
            let known = known_results(&stage.command, &flags, &run_name)?;
            let experiment = match (&stage.experiment, &known) {
                (Some(e), _) => e.clone(),
                (None, Some((e, _))) => e.clone(),
                (None, None) => bail!(
                    "{what}: equirun sweep does not know where `{}` writes its results; add experiment = \"<results folder>\" (and results = [\"{{run-name}}\"] when it writes several run folders)",
                    stage.command.join(" ")
                ),
            };
            let folders = match (&stage.results, known) {
                (Some(templates), _) => {
                    let mut v = vars.clone();
                    v.insert("run-name".into(), run_name.clone());
                    templates
                        .iter()
                        .map(|t| substitute(t, &v, false, &format!("{what} results")))
                        .collect::<Result<Vec<_>>>()?
                }
                (None, Some((_, f))) => f,
                (None, None) => vec![run_name.clone()],
            };
            let mut cli: Vec<String> = stage.command.clone();
            for (k, v) in &flags {
                match (v, value_string(v, k)?) {
                    (toml::Value::Boolean(true), _) => cli.push(format!("--{k}")),
                    (_, None) => {}
                    (_, Some(s)) => {
                        cli.push(format!("--{k}"));
                        cli.push(s);
                    }
                }
            }
            let seed_groups: Vec<Vec<u64>> = if cfg.per_seed {
                stage.seeds.iter().map(|&s| vec![s]).collect()
            } else {
                vec![stage.seeds.clone()]
            };
            for seeds in seed_groups {
                let mut args = cli.clone();
                let seed_s = seeds
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                args.extend([
                    "--seeds".to_string(),
                    seed_s,
                    "--out".into(),
                    out_s.clone(),
                    "--run-name".into(),
                    run_name.clone(),
                ]);
                let results = folders
                    .iter()
                    .flat_map(|f| {
                        seeds.iter().map(|&s| {
                            crate::experiments::harness::result_path(&cfg.out, &experiment, f, s)
                        })
                    })
                    .collect();
                runs.push(Run {
                    index: runs.len(),
                    stage_index,
                    stage: stage.name.clone(),
                    args,
                    experiment: experiment.clone(),
                    run_name: run_name.clone(),
                    seeds,
                    results,
                });
                stage_index += 1;
            }
        }
    }
    // two runs writing the same file would race
    let mut seen: BTreeMap<&Path, usize> = BTreeMap::new();
    for r in &runs {
        for p in &r.results {
            if let Some(o) = seen.insert(p, r.index) {
                bail!(
                    "runs {} and {} both write {}: give run_name placeholders for every grid key",
                    o,
                    r.index,
                    p.display()
                );
            }
        }
    }
    Ok(runs)
}

/// Equirun's own command-line parser, given to the sweep by its caller (`crate::cli::parse_error`:
/// the command line depends on this module, not the other way round): `None` when the arguments
/// (after the binary) parse, else the parser's message.
pub type Parser = fn(&[String]) -> Option<String>;

/// Parses every run's command line with `parse` (flag names, subcommands, every parse-time
/// range check), so that a typo'd flag or subcommand in a grid fails before anything runs (and
/// `--dry-run` fails too). The error names the run and carries the parser's message.
pub fn check_parses(runs: &[Run], parse: Parser) -> Result<()> {
    for run in runs {
        if let Some(msg) = parse(&run.args) {
            bail!(
                "run {} of stage '{}' ({}) is not a valid equirun command:\n  {}\n  {}",
                run.index + 1,
                run.stage,
                run.label(),
                run.args
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
                msg.replace('\n', "\n  ")
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// local runner

/// Where the sweep keeps its bookkeeping (markers, locks, logs) for a results root.
pub fn state_dir(out: &Path) -> PathBuf {
    out.join(".sweep")
}

fn marker_path(out: &Path, run: &Run) -> PathBuf {
    state_dir(out)
        .join("done")
        .join(format!("{}.json", run.id()))
}

fn lock_path(out: &Path, run: &Run) -> PathBuf {
    state_dir(out)
        .join("locks")
        .join(format!("{}.lock", run.id()))
}

/// Done = every result JSON exists and the marker says this exact command line succeeded.
pub fn is_done(out: &Path, run: &Run) -> bool {
    if !run.results.iter().all(|p| p.is_file()) || run.results.is_empty() {
        return false;
    }
    match std::fs::read_to_string(marker_path(out, run))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        Some(m) => m.get("args") == Some(&json!(run.args)),
        None => false,
    }
}

fn write_marker(out: &Path, run: &Run) -> Result<()> {
    let path = marker_path(out, run);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).map_err(|e| output::io_error("creating", dir, &e))?;
    let tmp = dir.join(format!(".{}.tmp-{}", run.id(), std::process::id()));
    let text = serde_json::to_string_pretty(&json!({
        "args": run.args, "results": run.results, "finished_at": crate::experiments::harness::now_rfc3339(),
    }))?;
    std::fs::write(&tmp, text).map_err(|e| output::io_error("writing", &tmp, &e))?;
    std::fs::rename(&tmp, &path).map_err(|e| output::io_error("renaming into", &path, &e))?;
    Ok(())
}

/// Options of a local sweep.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Parallel runs (at least 1).
    pub jobs: usize,
    /// Only list the commands (and whether each is done).
    pub dry_run: bool,
    /// The equirun binary the runs execute (the CLI passes `std::env::current_exe()`).
    pub binary: PathBuf,
    /// Extra environment variables of the runs (on top of this process's environment).
    pub env: Vec<(String, String)>,
}

impl SweepOptions {
    pub fn new(jobs: usize, dry_run: bool) -> Result<SweepOptions> {
        Ok(SweepOptions {
            jobs,
            dry_run,
            binary: std::env::current_exe().context("locating the equirun binary")?,
            env: Vec::new(),
        })
    }
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepSummary {
    pub total: usize,
    /// Skipped: done before this sweep started (or finished meanwhile by another process).
    pub already_done: usize,
    /// Executed and wrote new results.
    pub ran: usize,
    /// Executed, but every result existed and was left unchanged (the experiment skipped them).
    pub verified: usize,
    /// (run index, reason).
    pub failed: Vec<(usize, String)>,
    /// Not started because an earlier stage failed.
    pub blocked: usize,
}

impl SweepSummary {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.blocked == 0
    }
}

enum Outcome {
    AlreadyDone,
    Ran,
    Verified,
    Failed(String),
}

fn mtimes(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The last `n` lines of a run's log; when its `error:` line is further up (output printed after
/// it), that line comes first, so the excerpt always says why the run failed.
pub fn log_excerpt(path: &Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("(log unreadable: {e})"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out: Vec<&str> = Vec::new();
    let is_error = |l: &&str| l.starts_with("error:") || l.starts_with("error[");
    if !lines[start..].iter().any(is_error) {
        if let Some(i) = lines[..start].iter().rposition(is_error) {
            out.push(lines[i]);
            if i + 1 < start {
                out.push("…");
            }
        }
    }
    out.extend_from_slice(&lines[start..]);
    out.join("\n")
}

fn log_path(cfg: &SweepConfig, run: &Run) -> PathBuf {
    state_dir(&cfg.out)
        .join("logs")
        .join(&cfg.name)
        .join(format!(
            "{}-{:04}-{}-s{}.log",
            run.stage,
            run.index,
            run.run_name,
            run.seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("_")
        ))
}

fn open_lock(out: &Path, run: &Run) -> Result<File> {
    let p = lock_path(out, run);
    let dir = p.parent().unwrap();
    std::fs::create_dir_all(dir).map_err(|e| output::io_error("creating", dir, &e))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .with_context(|| format!("opening lock {}", p.display()))
}

fn execute(cfg: &SweepConfig, run: &Run, opts: &SweepOptions, n: usize) -> Outcome {
    match execute_inner(cfg, run, opts, n) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn execute_inner(cfg: &SweepConfig, run: &Run, opts: &SweepOptions, n: usize) -> Result<Outcome> {
    let lock = open_lock(&cfg.out, run)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "[{}/{n}] waiting: {} is being run by another process",
                run.index + 1,
                run.label()
            );
            lock.lock()
                .map_err(|e| output::io_error("locking", &lock_path(&cfg.out, run), &e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(output::io_error("locking", &lock_path(&cfg.out, run), &e))
        }
    }
    if is_done(&cfg.out, run) {
        return Ok(Outcome::AlreadyDone);
    }
    let before = mtimes(&run.results);
    let log = log_path(cfg, run);
    let log_dir = log.parent().unwrap();
    std::fs::create_dir_all(log_dir).map_err(|e| output::io_error("creating", log_dir, &e))?;
    let logf = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("[{}/{n}] start {}", run.index + 1, run.label());
    let t0 = Instant::now();
    let mut cmd = std::process::Command::new(&opts.binary);
    // N parallel runs share the cores (SCAN sets its own single thread)
    if opts.jobs > 1
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
        && run.args.first().map(String::as_str) != Some("scan")
    {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        cmd.env("RAYON_NUM_THREADS", (cores / opts.jobs).max(1).to_string());
    }
    let status = cmd
        .args(&run.args)
        // the child holds the lock through its stdin, even if this sweep is killed
        .stdin(std::process::Stdio::from(lock.try_clone()?))
        .stdout(std::process::Stdio::from(logf.try_clone()?))
        .stderr(std::process::Stdio::from(logf))
        .env("EQUIRUN_NO_PROGRESS", "1")
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .status()
        .with_context(|| format!("starting {}", opts.binary.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() {
        let code = status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "a signal".into());
        return Ok(Outcome::Failed(format!(
            "exit {code} after {secs:.1}s; log {}:\n{}",
            log.display(),
            log_excerpt(&log, 6)
        )));
    }
    let missing: Vec<String> = run
        .results
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Ok(Outcome::Failed(format!(
            "exited 0 but did not write {} (log {})",
            missing.join(", "),
            log.display()
        )));
    }
    if let Err(e) = write_marker(&cfg.out, run) {
        eprintln!(
            "warning: could not write the done marker of run {}: {e:#}",
            run.index + 1
        );
    }
    let unchanged = before.iter().all(Option::is_some) && before == mtimes(&run.results);
    eprintln!(
        "[{}/{n}] {} {} ({secs:.1}s)",
        run.index + 1,
        if unchanged { "verified" } else { "done " },
        run.label()
    );
    Ok(if unchanged {
        Outcome::Verified
    } else {
        Outcome::Ran
    })
}

/// Removes `.tmp-*` leftovers (a SIGKILL between an atomic write's temp file and its rename)
/// from result folders of `runs` whose runs this process can all lock (nobody is writing there),
/// and stale done-marker temp files.
pub fn clean_stale_temps(out: &Path, runs: &[&Run]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    // folder → the runs writing there (each once: two locks of one run would conflict)
    let mut by_folder: BTreeMap<PathBuf, BTreeMap<String, &Run>> = BTreeMap::new();
    for r in runs {
        for p in &r.results {
            by_folder
                .entry(p.parent().unwrap().to_path_buf())
                .or_default()
                .insert(r.id(), r);
        }
    }
    for (folder, rs) in by_folder {
        if !folder.is_dir() {
            continue;
        }
        let mut held = Vec::new();
        let mut all = true;
        for r in rs.values() {
            let f = open_lock(out, r)?;
            if f.try_lock().is_ok() {
                held.push(f);
            } else {
                all = false;
                break;
            }
        }
        if all {
            let entries =
                std::fs::read_dir(&folder).map_err(|e| output::io_error("listing", &folder, &e))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(".tmp-") && e.path().is_file() {
                    std::fs::remove_file(e.path())
                        .map_err(|err| output::io_error("removing", &e.path(), &err))?;
                    removed.push(e.path());
                }
            }
        }
        drop(held);
    }
    let done = state_dir(out).join("done");
    if let Ok(rd) = std::fs::read_dir(&done) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((_, pid)) = name.rsplit_once(".tmp-") {
                let alive = Path::new("/proc").join(pid).exists();
                if !alive {
                    let _ = std::fs::remove_file(e.path());
                    removed.push(e.path());
                }
            }
        }
    }
    Ok(removed)
}

/// Runs a sweep locally: stages in order, up to `jobs` runs at once, done runs skipped.
/// Prints progress and a summary on stderr (`--dry-run`: the commands on stdout).
pub fn run_sweep(cfg: &SweepConfig, opts: &SweepOptions) -> Result<SweepSummary> {
    let runs = expand(cfg)?;
    let n = runs.len();
    let mut summary = SweepSummary {
        total: n,
        ..Default::default()
    };
    if opts.dry_run {
        for r in &runs {
            let done = is_done(&cfg.out, r);
            if done {
                summary.already_done += 1;
            }
            println!(
                "{}{}",
                if done { "# done: " } else { "" },
                r.command_line(&opts.binary)
            );
        }
        eprintln!(
            "sweep {}: {n} runs in {} stage(s), {} done, {} to run (dry run)",
            cfg.name,
            cfg.stages.len(),
            summary.already_done,
            n - summary.already_done
        );
        return Ok(summary);
    }
    let jobs = opts.jobs.max(1);
    let t0 = Instant::now();
    eprintln!(
        "sweep {}: {n} runs in {} stage(s), {jobs} at a time; results in {}",
        cfg.name,
        cfg.stages.len(),
        cfg.out.display()
    );
    for stage in &cfg.stages {
        let stage_runs: Vec<&Run> = runs.iter().filter(|r| r.stage == stage.name).collect();
        if !summary.failed.is_empty() {
            summary.blocked += stage_runs.len();
            eprintln!(
                "stage {}: {} runs not started (an earlier stage failed)",
                stage.name,
                stage_runs.len()
            );
            continue;
        }
        for p in clean_stale_temps(&cfg.out, &stage_runs)? {
            eprintln!("removed a stale temp file {}", p.display());
        }
        let mut todo = VecDeque::new();
        for r in &stage_runs {
            if is_done(&cfg.out, r) {
                summary.already_done += 1;
            } else {
                todo.push_back(*r);
            }
        }
        if cfg.stages.len() > 1 || !todo.is_empty() {
            eprintln!(
                "stage {}: {} runs, {} done, {} to run",
                stage.name,
                stage_runs.len(),
                stage_runs.len() - todo.len(),
                todo.len()
            );
        }
        let queue = Mutex::new(todo);
        let results: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| loop {
                    let next = queue.lock().unwrap().pop_front();
                    let Some(run) = next else { break };
                    let o = execute(cfg, run, opts, n);
                    if let Outcome::Failed(msg) = &o {
                        eprintln!("[{}/{n}] FAILED {}: {msg}", run.index + 1, run.label());
                    }
                    results.lock().unwrap().push((run.index, o));
                });
            }
        });
        // again now that this stage's runs (and any orphans they waited for) are over
        for p in clean_stale_temps(&cfg.out, &stage_runs)? {
            eprintln!("removed a stale temp file {}", p.display());
        }
        for (i, o) in results.into_inner().unwrap() {
            match o {
                Outcome::AlreadyDone => summary.already_done += 1,
                Outcome::Ran => summary.ran += 1,
                Outcome::Verified => summary.verified += 1,
                Outcome::Failed(m) => summary.failed.push((i, m)),
            }
        }
    }
    summary.failed.sort_by_key(|f| f.0);
    eprintln!(
        "sweep {}: {n} runs: {} already done, {} ran, {} verified existing results, {} failed, {} not started ({:.1}s)",
        cfg.name,
        summary.already_done,
        summary.ran,
        summary.verified,
        summary.failed.len(),
        summary.blocked,
        t0.elapsed().as_secs_f64()
    );
    for (i, m) in &summary.failed {
        eprintln!(
            "  failed [{}] {}\n    {}",
            i + 1,
            runs[*i].command_line(&opts.binary),
            m.lines().next().unwrap_or("")
        );
    }
    if !summary.ok() {
        eprintln!("rerun the same command to retry: finished runs are kept and skipped");
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// emitters

fn stage_file_stem(cfg: &SweepConfig, stage: &Stage) -> String {
    if cfg.stages.len() == 1 {
        "runs".into()
    } else {
        stage.name.clone()
    }
}

fn write_text(path: &Path, text: &str, executable: bool) -> Result<()> {
    output::write_bytes_atomic(path, text.as_bytes())?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| output::io_error("making executable", path, &e))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Writes one run list per stage (`<stage>.txt`, or `runs.txt` for one stage: one shell
/// command per line, in expansion order). Returns the files.
pub fn emit_list(cfg: &SweepConfig, dir: &Path, binary: &Path) -> Result<Vec<PathBuf>> {
    let runs = expand(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for stage in &cfg.stages {
        let mut text = String::new();
        for r in runs.iter().filter(|r| r.stage == stage.name) {
            text.push_str(&r.command_line(binary));
            text.push('\n');
        }
        let path = dir.join(format!("{}.txt", stage_file_stem(cfg, stage)));
        write_text(&path, &text, false)?;
        files.push(path);
    }
    Ok(files)
}

/// Writes, per stage, the run list and an sbatch job-array script (task i runs line i+1 of
/// the list), plus `submit.sh`, which submits the stages in order, each with
/// `--dependency=afterok:` on the previous array. Returns the files (submit.sh last).
pub fn emit_slurm(cfg: &SweepConfig, dir: &Path, binary: &Path) -> Result<Vec<PathBuf>> {
    let runs = expand(cfg)?;
    let lists = emit_list(cfg, dir, binary)?;
    let dir_abs = absolute(dir)?;
    let mut files = Vec::new();
    let mut submit = String::from(
        "#!/bin/bash\n# Submits the sweep's job arrays in order (each stage waits for the previous one to succeed).\n\
         # Run it from the folder that relative paths in the run lists (e.g. --out) refer to.\n\
         set -euo pipefail\nhere=\"$(cd \"$(dirname \"${BASH_SOURCE[0]}\")\" && pwd)\"\nprev=\"\"\n",
    );
    for (stage, list) in cfg.stages.iter().zip(&lists) {
        let count = runs.iter().filter(|r| r.stage == stage.name).count();
        if count == 0 {
            continue;
        }
        let stem = stage_file_stem(cfg, stage);
        if count > 1000 {
            eprintln!("warning: stage {} has {count} runs; many clusters cap job arrays at 1001 tasks (MaxArraySize)", stage.name);
        }
        let s = &stage.slurm;
        let mut sh = String::from("#!/bin/bash\n");
        let job = s.job_name.clone().unwrap_or_else(|| {
            if cfg.stages.len() == 1 {
                format!("equirun-{}", cfg.name)
            } else {
                format!("equirun-{}-{}", cfg.name, stage.name)
            }
        });
        sh += &format!("#SBATCH --job-name={}\n", shell_quote(&job));
        let limit = s.array_limit.map(|l| format!("%{l}")).unwrap_or_default();
        sh += &format!("#SBATCH --array=0-{}{limit}\n", count - 1);
        sh += &format!(
            "#SBATCH --output={}\n",
            s.output
                .clone()
                .unwrap_or_else(|| "slurm-%x-%A_%a.out".into())
        );
        for (flag, v) in [
            ("partition", &s.partition),
            ("account", &s.account),
            ("qos", &s.qos),
            ("time", &s.time),
            ("mem", &s.mem),
            ("gres", &s.gres),
        ] {
            if let Some(v) = v {
                sh += &format!("#SBATCH --{flag}={v}\n");
            }
        }
        if let Some(c) = s.cpus_per_task {
            sh += &format!("#SBATCH --cpus-per-task={c}\n");
        }
        for e in &s.extra {
            sh += &format!("#SBATCH {e}\n");
        }
        sh += &format!(
            "# equirun sweep '{}', stage '{}': {count} runs, one per array task.\n\
             # Task i runs line i+1 of the run list; finished runs are skipped by equirun itself.\n\
             set -euo pipefail\n\
             cd \"${{SLURM_SUBMIT_DIR:-$PWD}}\"\n",
            cfg.name, stage.name
        );
        for line in &s.setup {
            sh += line;
            sh.push('\n');
        }
        sh += &format!(
            "RUNS=\"${{EQUIRUN_RUNS:-{}}}\"\n\
             : \"${{SLURM_ARRAY_TASK_ID:?this script is an array job: submit it with sbatch (or set SLURM_ARRAY_TASK_ID)}}\"\n\
             line=\"$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$RUNS\")\"\n\
             if [ -z \"$line\" ]; then\n  echo \"no run for array task $SLURM_ARRAY_TASK_ID in $RUNS\" >&2\n  exit 1\nfi\n\
             export EQUIRUN_NO_PROGRESS=1\n\
             echo \"task $SLURM_ARRAY_TASK_ID on $(hostname): $line\" >&2\n\
             eval \"exec $line\"\n",
            shell_quote(&dir_abs.join(list.file_name().unwrap()).display().to_string())
        );
        let path = dir.join(format!("{stem}.sbatch"));
        write_text(&path, &sh, true)?;
        files.push(list.clone());
        files.push(path);
        let var = format!(
            "job_{}",
            stem.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        submit += &format!(
            "{var}=$(sbatch --parsable ${{prev:+--dependency=afterok:$prev}} --export=ALL,EQUIRUN_RUNS=\"$here/{stem}.txt\" \"$here/{stem}.sbatch\")\n\
             {var}=\"${{{var}%%;*}}\"\necho \"stage {}: job array ${var} ({count} tasks)\"\nprev=\"${var}\"\n",
            stage.name
        );
    }
    let path = dir.join("submit.sh");
    write_text(&path, &submit, true)?;
    files.push(path);
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// command line

/// What `--emit` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitKind {
    /// sbatch job-array scripts (one array task per run), their run lists and submit.sh.
    Slurm,
    /// one run list per stage (one command a line) for GNU parallel or xargs.
    List,
}

/// `equirun sweep CONFIG`.
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// Sweep config (TOML), e.g. configs/scan-ii.toml.
    pub config: PathBuf,
    /// Runs at once; each run is one equirun process.
    #[arg(long, default_value_t = 1, value_parser = crate::cli::opts::at_least_one)]
    pub jobs: usize,
    /// Print the commands (done runs commented out) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the runs for another engine instead of running them.
    #[arg(long, value_enum)]
    pub emit: Option<EmitKind>,
    /// Folder of the --emit files (default: sweeps/<sweep name>).
    #[arg(long)]
    pub emit_dir: Option<PathBuf>,
    /// Results root (overrides the config's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The equirun binary the runs call (default: this one; e.g. `equirun` to use PATH on a cluster).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

/// Entry point of `equirun sweep`: the exit code (1 when a run failed).
/// `parse` checks each run's command line ([`check_parses`]) before anything runs or is written.
pub fn run(a: &SweepArgs, parse: Parser) -> Result<i32> {
    let mut cfg = SweepConfig::from_file(&a.config)?;
    if let Some(o) = &a.out {
        cfg.out = o.clone();
    }
    check_parses(&expand(&cfg)?, parse)?;
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating the equirun binary")?,
    };
    let Some(kind) = a.emit else {
        if !a.dry_run {
            crate::output::check_writable_dir(&cfg.out).map_err(|e| {
                anyhow::anyhow!(
                    "results root {} (--out, or `out` in {}): {e:#}; choose a folder you can write to",
                    cfg.out.display(),
                    a.config.display()
                )
            })?;
        }
        let s = run_sweep(
            &cfg,
            &SweepOptions {
                jobs: a.jobs,
                dry_run: a.dry_run,
                binary,
                env: Vec::new(),
            },
        )?;
        return Ok(if s.ok() { 0 } else { 1 });
    };
    let dir = a
        .emit_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweeps").join(&cfg.name));
    let n = expand(&cfg)?.len();
    let files = match kind {
        EmitKind::Slurm => emit_slurm(&cfg, &dir, &binary)?,
        EmitKind::List => emit_list(&cfg, &dir, &binary)?,
    };
    for f in &files {
        println!("{}", f.display());
    }
    match kind {
        EmitKind::Slurm => eprintln!(
            "{n} runs in {} stage(s). Submit from the folder the runs' relative paths refer to: bash {}",
            cfg.stages.len(),
            dir.join("submit.sh").display()
        ),
        EmitKind::List => {
            let lists: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            eprintln!(
                "{n} runs in {} stage(s); run the lists in order, e.g.\n  {}\n  {}",
                cfg.stages.len(),
                lists.iter().map(|l| format!("parallel -j 4 < {l}")).collect::<Vec<_>>().join(" && "),
                lists.iter().map(|l| format!("tr '\\n' '\\0' < {l} | xargs -0 -P 4 -n 1 sh -c")).collect::<Vec<_>>().join(" && ")
            );
        }
    }
    Ok(0)
}
