//! SCAN and SCAN-II data: file reader/writer, official split resolution, a
//! deterministic generator of the SCAN grammar over an arbitrary direction set,
//! the SCAN-II add-primitive splits (docs/experiments.md, "scan") and token
//! vocabularies (docs/methods.md, "Word swaps (SCAN)").
//!
//! Conventions:
//! * Action tokens are stored WITHOUT the official `I_` prefix (`JUMP`,
//!   `TURN_LEFT`, ...); [`write_scan_file`] re-adds it.
//! * Generated data is in a canonical order (sorted by the command string);
//!   the only randomness is the SCAN-II train shuffle, driven by a
//!   `ChaCha8Rng` seeded with the caller's seed.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::equi::TokenSymmetry;
use crate::groups::perm::TokenPerm;
use crate::groups::FiniteGroup;

// ---------------------------------------------------------------------------
// Examples, reading and writing
// ---------------------------------------------------------------------------

/// One SCAN pair. `actions` carry no `I_` prefix (`TURN_LEFT`, `WALK`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScanExample {
    pub command: Vec<String>,
    pub actions: Vec<String>,
}

impl ScanExample {
    /// The command words joined by single spaces (`"jump twice"`).
    pub fn command_str(&self) -> String {
        self.command.join(" ")
    }

    /// The line in the official file format (with `I_` prefixes, no newline).
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(16 + 8 * (self.command.len() + self.actions.len()));
        s.push_str("IN:");
        for w in &self.command {
            s.push(' ');
            s.push_str(w);
        }
        s.push_str(" OUT:");
        for a in &self.actions {
            s.push_str(" I_");
            s.push_str(a);
        }
        s
    }
}

/// Official action prefix.
pub const ACTION_PREFIX: &str = "I_";

/// `I_TURN_LEFT` → `TURN_LEFT`; a token without the prefix is returned unchanged.
pub fn strip_action_prefix(token: &str) -> &str {
    token.strip_prefix(ACTION_PREFIX).unwrap_or(token)
}

fn truncate_for_msg(line: &str) -> String {
    const MAX: usize = 160;
    if line.chars().count() <= MAX {
        line.to_string()
    } else {
        let mut s: String = line.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// Parse one line `IN: <command words> OUT: <I_action tokens>`.
///
/// `path` and the 1-based `lineno` are only used in error messages, which
/// read `<path>:<lineno>: malformed SCAN line: expected ...; got "..."`.
pub fn parse_scan_line(line: &str, path: &Path, lineno: usize) -> Result<ScanExample> {
    let line = line.trim_end_matches(['\n', '\r']);
    let err = |what: &str| {
        anyhow!(
            "{}:{}: malformed SCAN line: expected {}; got {:?}",
            path.display(),
            lineno,
            what,
            truncate_for_msg(line)
        )
    };
    let mut tokens = line.split_whitespace();
    match tokens.next() {
        Some("IN:") => {}
        _ => {
            return Err(err(
                "the line to start with `IN:` (format `IN: <command> OUT: <actions>`)",
            ))
        }
    }
    let mut command = Vec::new();
    let mut saw_out = false;
    for t in tokens.by_ref() {
        match t {
            "OUT:" => {
                saw_out = true;
                break;
            }
            "IN:" => return Err(err("a single `IN:` marker")),
            _ => command.push(t.to_string()),
        }
    }
    if !saw_out {
        return Err(err("an `OUT:` marker after the command"));
    }
    if command.is_empty() {
        return Err(err("a non-empty command between `IN:` and `OUT:`"));
    }
    let mut actions = Vec::new();
    for t in tokens {
        if t == "IN:" || t == "OUT:" {
            return Err(err("exactly one `IN:` and one `OUT:` marker"));
        }
        match t.strip_prefix(ACTION_PREFIX) {
            Some(a) if !a.is_empty() => actions.push(a.to_string()),
            _ => {
                return Err(err(&format!(
                    "action tokens with the `{ACTION_PREFIX}` prefix after `OUT:` (found {t:?})"
                )))
            }
        }
    }
    if actions.is_empty() {
        return Err(err("at least one action token after `OUT:`"));
    }
    Ok(ScanExample { command, actions })
}

/// Parse SCAN text. Blank lines are allowed only at the end of the text.
pub fn parse_scan_str(text: &str, path: &Path) -> Result<Vec<ScanExample>> {
    let mut out = Vec::new();
    let mut first_blank: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            first_blank.get_or_insert(lineno);
            continue;
        }
        if let Some(b) = first_blank {
            bail!(
                "{}:{}: malformed SCAN line: expected `IN: <command> OUT: <actions>`; got a blank line \
                 followed by more data at line {} (blank lines are only allowed at the end)",
                path.display(),
                b,
                lineno
            );
        }
        out.push(parse_scan_line(line, path, lineno)?);
    }
    Ok(out)
}

/// Read a SCAN file in the official format. Actions are returned without `I_`.
pub fn read_scan_file(path: &Path) -> Result<Vec<ScanExample>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read SCAN file {}", path.display()))?;
    parse_scan_str(&text, path)
}

/// Write examples in the official format (re-adding `I_`), one per line with a
/// trailing newline. Atomic: the data go to a temporary file in the same
/// directory, which is then renamed over `path`. Missing parent directories
/// are created.
pub fn write_scan_file(path: &Path, examples: &[ScanExample]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("write_scan_file: {} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{}.tmp.{}", file_name, std::process::id()));

    let mut buf = String::with_capacity(examples.len() * 96);
    for ex in examples {
        buf.push_str(&ex.to_line());
        buf.push('\n');
    }
    let result = (|| -> Result<()> {
        let mut f = fs::File::create(&tmp)
            .with_context(|| format!("cannot create temporary file {}", tmp.display()))?;
        f.write_all(buf.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------
// Official split files
// ---------------------------------------------------------------------------

/// Split names accepted by [`split_files`] (underscores are accepted too).
pub const SPLITS: [&str; 5] = [
    "simple",
    "add-jump",
    "add-turn-left",
    "length",
    "around-right",
];

/// Environment variable naming a data directory that contains `scan/`.
pub const DATA_ENV: &str = "EQUIRUN_DATA";

/// `data_dir` may be the SCAN directory itself (holding `tasks.txt`,
/// `simple_split/`, ...) or a parent holding `scan/`. Returns the SCAN directory.
pub fn resolve_scan_dir(data_dir: &Path) -> PathBuf {
    let nested = data_dir.join("scan");
    if nested.is_dir()
        && !data_dir.join("tasks.txt").is_file()
        && !data_dir.join("simple_split").is_dir()
    {
        nested
    } else {
        data_dir.to_path_buf()
    }
}

/// (subdirectory, train file, test file) of an official split, relative to the SCAN dir.
fn split_rel_paths(split: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let norm = split.trim().to_ascii_lowercase().replace('_', "-");
    Some(match norm.as_str() {
        "simple" => (
            "simple_split",
            "tasks_train_simple.txt",
            "tasks_test_simple.txt",
        ),
        "add-jump" => (
            "add_prim_split",
            "tasks_train_addprim_jump.txt",
            "tasks_test_addprim_jump.txt",
        ),
        "add-turn-left" => (
            "add_prim_split",
            "tasks_train_addprim_turn_left.txt",
            "tasks_test_addprim_turn_left.txt",
        ),
        "length" => (
            "length_split",
            "tasks_train_length.txt",
            "tasks_test_length.txt",
        ),
        "around-right" => (
            "template_split",
            "tasks_train_template_around_right.txt",
            "tasks_test_template_around_right.txt",
        ),
        _ => return None,
    })
}

/// (train, test) file paths of an official SCAN split. `data_dir` is either
/// the SCAN directory or a directory containing `scan/` (see [`resolve_scan_dir`]).
/// Both files must exist.
pub fn split_files(data_dir: &Path, split: &str) -> Result<(PathBuf, PathBuf)> {
    let (sub, train, test) = split_rel_paths(split).ok_or_else(|| {
        anyhow!(
            "unknown SCAN split {:?}; valid splits: {}",
            split,
            SPLITS.join(", ")
        )
    })?;
    let scan_dir = resolve_scan_dir(data_dir);
    let train = scan_dir.join(sub).join(train);
    let test = scan_dir.join(sub).join(test);
    for p in [&train, &test] {
        if !p.is_file() {
            bail!(
                "SCAN file for split {:?} not found: {} (data dir {}); point --data-dir at the SCAN \
                 data (a directory holding {sub}/ or scan/{sub}/), or set the environment variable \
                 {DATA_ENV} to a directory containing scan/",
                split,
                p.display(),
                data_dir.display()
            );
        }
    }
    Ok((train, test))
}

// ---------------------------------------------------------------------------
// Grammar enumeration
// ---------------------------------------------------------------------------

/// Primitive verbs U of the grammar, with their actions.
pub const VERBS: [&str; 4] = ["walk", "look", "run", "jump"];
/// Direction set of the original SCAN.
pub const SCAN_DIRECTIONS: [&str; 2] = ["left", "right"];
/// Direction set of SCAN-II.
pub const SCAN_II_DIRECTIONS: [&str; 4] = ["left", "right", "up", "down"];

fn verb_action(v: &str) -> String {
    v.to_ascii_uppercase()
}

fn turn_action(dir: &str) -> String {
    format!("TURN_{}", dir.to_ascii_uppercase())
}

/// Every command of the SCAN grammar over `directions`, with its action
/// sequence, sorted by the command string (canonical order), no duplicates.
///
/// Grammar (after the official "cleaning" of `D opposite D` / `D around D`,
/// which keeps the first D's verb and the second D's direction):
/// ```text
/// C -> S | S and S | S after S
/// S -> V | V twice | V thrice
/// V -> U | U dir | turn dir | x opposite dir | x around dir     (x in U ∪ {turn})
/// U -> walk | look | run | jump
/// ```
/// Semantics: `turn d` = TURN_d; `u d` = TURN_d u; `x opposite d` = TURN_d TURN_d x;
/// `x around d` = (TURN_d x)×4 (x contributes nothing for `turn`); twice/thrice
/// repeat; `a and b` = a b; `a after b` = b a.
///
/// With [`SCAN_DIRECTIONS`] this is exactly SCAN's `tasks.txt` (20,910 pairs);
/// with [`SCAN_II_DIRECTIONS`] it is SCAN-II (73,920 pairs).
pub fn generate_commands(directions: &[&str]) -> Vec<ScanExample> {
    // Deduplicate directions while keeping the input deterministic.
    let mut dirs: Vec<&str> = Vec::new();
    for d in directions {
        if !dirs.contains(d) {
            dirs.push(d);
        }
    }

    // V: (command words, actions)
    let mut vs: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for u in VERBS {
        vs.push((vec![u.to_string()], vec![verb_action(u)]));
    }
    let xs: Vec<&str> = VERBS
        .iter()
        .copied()
        .chain(std::iter::once("turn"))
        .collect();
    for x in &xs {
        let x_act: Option<String> = if *x == "turn" {
            None
        } else {
            Some(verb_action(x))
        };
        for d in &dirs {
            let t = turn_action(d);
            // D -> x d
            let mut a = vec![t.clone()];
            a.extend(x_act.clone());
            vs.push((vec![x.to_string(), d.to_string()], a));
            // x opposite d
            let mut a = vec![t.clone(), t.clone()];
            a.extend(x_act.clone());
            vs.push((vec![x.to_string(), "opposite".into(), d.to_string()], a));
            // x around d
            let mut a = Vec::with_capacity(8);
            for _ in 0..4 {
                a.push(t.clone());
                a.extend(x_act.clone());
            }
            vs.push((vec![x.to_string(), "around".into(), d.to_string()], a));
        }
    }

    // S
    let mut ss: Vec<(Vec<String>, Vec<String>)> = Vec::with_capacity(vs.len() * 3);
    for (cmd, act) in &vs {
        ss.push((cmd.clone(), act.clone()));
        for (word, n) in [("twice", 2usize), ("thrice", 3usize)] {
            let mut c = cmd.clone();
            c.push(word.to_string());
            let mut a = Vec::with_capacity(act.len() * n);
            for _ in 0..n {
                a.extend(act.iter().cloned());
            }
            ss.push((c, a));
        }
    }

    // C
    let n = ss.len();
    let mut out: Vec<(String, ScanExample)> = Vec::with_capacity(n + 2 * n * n);
    let mut push = |command: Vec<String>, actions: Vec<String>| {
        let key = command.join(" ");
        out.push((key, ScanExample { command, actions }));
    };
    for (c, a) in &ss {
        push(c.clone(), a.clone());
    }
    for (c1, a1) in &ss {
        for (c2, a2) in &ss {
            for conj in ["and", "after"] {
                let mut c = Vec::with_capacity(c1.len() + c2.len() + 1);
                c.extend(c1.iter().cloned());
                c.push(conj.to_string());
                c.extend(c2.iter().cloned());
                let (first, second) = if conj == "and" { (a1, a2) } else { (a2, a1) };
                let mut a = Vec::with_capacity(first.len() + second.len());
                a.extend(first.iter().cloned());
                a.extend(second.iter().cloned());
                push(c, a);
            }
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out.into_iter().map(|(_, e)| e).collect()
}

// ---------------------------------------------------------------------------
// SCAN-II add-primitive splits
// ---------------------------------------------------------------------------

/// Held-out phrases in the order of the official script
/// (`splits = ['turn up', 'jump', 'turn left']`); the combined test file is
/// the concatenation in this order.
pub const SCAN_II_HELD_OUT: [&str; 3] = ["turn up", "jump", "turn left"];
/// Fraction of the train size used as the repeat count of each primitive.
pub const SCAN_II_PRIM_FRACTION: f64 = 0.06;
/// Test split ids, in the order they appear in [`ScanIISplits::tests`].
pub const SCAN_II_TEST_SPLITS: [&str; 4] =
    ["jump", "turn_left", "turn_up", "turn_up_jump_turn_left"];

/// SCAN-II train set (shuffled) and the four test splits
/// `jump`, `turn_left`, `turn_up`, `turn_up_jump_turn_left` (in that order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanIISplits {
    pub train: Vec<ScanExample>,
    pub tests: Vec<(String, Vec<ScanExample>)>,
}

impl ScanIISplits {
    /// The test split with the given id (`jump`, `turn_left`, ...).
    pub fn test(&self, id: &str) -> Option<&[ScanExample]> {
        self.tests
            .iter()
            .find(|(n, _)| n == id)
            .map(|(_, v)| v.as_slice())
    }
}

/// Official membership test: the held-out phrase occurs as a *substring* of
/// the line. The official script tests the whole `IN: ... OUT: ...` line, but
/// the output part is upper case, so this is the same as testing the command
/// string (checked in the unit tests). With this vocabulary the substring
/// test also coincides with a word/bigram test.
pub fn contains_phrase(ex: &ScanExample, phrase: &str) -> bool {
    ex.command_str().contains(phrase)
}

/// Build the SCAN-II add-primitive splits (docs/experiments.md, "scan"), deterministically.
///
/// * A command goes to the test split of every held-out phrase it contains as
///   a substring (the bare primitives included, because the official
///   `s not in commands` guard compares a phrase with whole lines and is a no-op).
/// * Train = every other command (43,365), plus each primitive command
///   (`turn up`, `jump`, `turn left`) appended `int(0.06 × 43,365) = 2,601`
///   times → 51,168 lines, shuffled with `ChaCha8Rng::seed_from_u64(seed)`.
/// * Test splits are in canonical (sorted) order; the combined split is the
///   concatenation `turn_up`, `jump`, `turn_left` (overlaps repeated).
pub fn scan_ii_splits(seed: u64) -> ScanIISplits {
    let data = generate_commands(&SCAN_II_DIRECTIONS);
    let mut train = Vec::with_capacity(data.len());
    let mut per_phrase: Vec<Vec<ScanExample>> = vec![Vec::new(); SCAN_II_HELD_OUT.len()];
    let mut prims: Vec<Option<ScanExample>> = vec![None; SCAN_II_HELD_OUT.len()];
    for ex in data {
        let cmd = ex.command_str();
        let hits: Vec<usize> = (0..SCAN_II_HELD_OUT.len())
            .filter(|&k| cmd.contains(SCAN_II_HELD_OUT[k]))
            .collect();
        if let Some(k) = SCAN_II_HELD_OUT.iter().position(|p| *p == cmd) {
            prims[k] = Some(ex.clone());
        }
        match hits.split_last() {
            None => train.push(ex),
            Some((&last, rest)) => {
                for &k in rest {
                    per_phrase[k].push(ex.clone());
                }
                per_phrase[last].push(ex);
            }
        }
    }
    let n = (train.len() as f64 * SCAN_II_PRIM_FRACTION) as usize; // Python int(): truncation
    for (prim, phrase) in prims.into_iter().zip(SCAN_II_HELD_OUT) {
        let prim = prim
            .unwrap_or_else(|| panic!("held-out primitive {phrase:?} is a command of the grammar"));
        train.extend(std::iter::repeat_n(prim, n));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    train.shuffle(&mut rng);

    let [turn_up, jump, turn_left]: [Vec<ScanExample>; 3] =
        per_phrase.try_into().expect("three held-out phrases");
    let mut combined = Vec::with_capacity(turn_up.len() + jump.len() + turn_left.len());
    combined.extend(turn_up.iter().cloned());
    combined.extend(jump.iter().cloned());
    combined.extend(turn_left.iter().cloned());
    ScanIISplits {
        train,
        tests: vec![
            ("jump".to_string(), jump),
            ("turn_left".to_string(), turn_left),
            ("turn_up".to_string(), turn_up),
            ("turn_up_jump_turn_left".to_string(), combined),
        ],
    }
}

/// Datasets accepted by [`write_generated`].
pub const GENERATED_DATASETS: [&str; 2] = ["scan", "scan-ii"];

/// Write a generated dataset into `out_dir` (created if missing).
/// * `scan`: `tasks.txt` (20,910 lines, canonical order; `seed` unused);
/// * `scan-ii`: `train.txt` (51,168 lines, shuffled with `seed`) and
///   `test_<split>.txt` for `jump`, `turn_left`, `turn_up`, `turn_up_jump_turn_left`.
///
/// Returns (file name, line count) for every file written.
pub fn write_generated(dataset: &str, out_dir: &Path, seed: u64) -> Result<Vec<(String, usize)>> {
    let norm = dataset.trim().to_ascii_lowercase().replace('_', "-");
    let files: Vec<(String, Vec<ScanExample>)> = match norm.as_str() {
        "scan" => vec![("tasks.txt".to_string(), generate_commands(&SCAN_DIRECTIONS))],
        "scan-ii" | "scanii" | "scan2" => {
            let s = scan_ii_splits(seed);
            let mut v = vec![("train.txt".to_string(), s.train)];
            for (name, ex) in s.tests {
                v.push((format!("test_{name}.txt"), ex));
            }
            v
        }
        _ => bail!(
            "unknown generated dataset {:?}; valid: {}",
            dataset,
            GENERATED_DATASETS.join(", ")
        ),
    };
    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let mut written = Vec::with_capacity(files.len());
    for (name, ex) in files {
        write_scan_file(&out_dir.join(&name), &ex)?;
        written.push((name, ex.len()));
    }
    Ok(written)
}

// ---------------------------------------------------------------------------
// Vocabularies
// ---------------------------------------------------------------------------

/// Id of the start-of-sequence token.
pub const SOS: u32 = 0;
/// Id of the end-of-sequence token.
pub const EOS: u32 = 1;
/// Spelling of the reserved tokens.
pub const SOS_TOKEN: &str = "<SOS>";
pub const EOS_TOKEN: &str = "<EOS>";

/// Which side of the examples a vocabulary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Command words.
    Input,
    /// Action tokens (no `I_` prefix).
    Output,
}

/// Token ↔ id map: SOS = 0, EOS = 1, then the tokens in sorted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocab {
    /// Vocabulary of the given tokens (duplicates ignored; order irrelevant).
    pub fn from_tokens<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set: Vec<String> = tokens
            .into_iter()
            .map(|t| t.as_ref().to_string())
            .filter(|t| t != SOS_TOKEN && t != EOS_TOKEN)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        set.sort();
        let mut all = Vec::with_capacity(set.len() + 2);
        all.push(SOS_TOKEN.to_string());
        all.push(EOS_TOKEN.to_string());
        all.extend(set);
        let index = all
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Vocab { tokens: all, index }
    }

    /// Vocabulary of one side of the examples.
    pub fn from_examples(examples: &[ScanExample], side: Side) -> Self {
        let it = examples.iter().flat_map(|e| match side {
            Side::Input => e.command.iter(),
            Side::Output => e.actions.iter(),
        });
        Self::from_tokens(it)
    }

    /// Number of ids, the two reserved ones included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true (SOS and EOS are always present); provided for clippy.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }

    /// All tokens by id (`[<SOS>, <EOS>, ...sorted]`).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Ids of the tokens (no SOS/EOS added). Unknown token → error naming it.
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S]) -> Result<Vec<u32>> {
        tokens
            .iter()
            .map(|t| {
                let t = t.as_ref();
                self.id(t).ok_or_else(|| {
                    anyhow!(
                        "unknown token {:?} (not in the {}-token vocabulary)",
                        t,
                        self.len()
                    )
                })
            })
            .collect()
    }

    /// [`Vocab::encode`] followed by EOS (the encoder input convention of §3.3).
    pub fn encode_with_eos<S: AsRef<str>>(&self, tokens: &[S]) -> Result<Vec<u32>> {
        let mut v = self.encode(tokens)?;
        v.push(EOS);
        Ok(v)
    }

    /// Tokens of the ids, reserved ones spelled `<SOS>`/`<EOS>`. Out-of-range id → error.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<String>> {
        ids.iter()
            .map(|&i| {
                self.token(i).map(str::to_string).ok_or_else(|| {
                    anyhow!(
                        "token id {} out of range (vocabulary size {})",
                        i,
                        self.len()
                    )
                })
            })
            .collect()
    }

    /// Like [`Vocab::decode`] but skips SOS and stops before the first EOS.
    pub fn decode_until_eos(&self, ids: &[u32]) -> Result<Vec<String>> {
        let end = ids.iter().position(|&i| i == EOS).unwrap_or(ids.len());
        let kept: Vec<u32> = ids[..end].iter().copied().filter(|&i| i != SOS).collect();
        self.decode(&kept)
    }
}

/// Human-readable summary of a list of examples (count, vocab sizes, max lengths).
pub fn describe(examples: &[ScanExample]) -> String {
    let vin = Vocab::from_examples(examples, Side::Input);
    let vout = Vocab::from_examples(examples, Side::Output);
    let max_in = examples.iter().map(|e| e.command.len()).max().unwrap_or(0);
    let max_out = examples.iter().map(|e| e.actions.len()).max().unwrap_or(0);
    let mut s = String::new();
    let _ = write!(
        s,
        "{} examples, input vocab {} words, output vocab {} actions, max input {} words, max output {} actions",
        examples.len(),
        vin.len() - 2,
        vout.len() - 2,
        max_in,
        max_out
    );
    s
}

// ---------------------------------------------------------------------------
// Multi-equitune's canonicaliser for the SCAN word swaps
// ---------------------------------------------------------------------------

/// How multi-equitune removes the other factors from a SCAN input (`c₋ᵢ`, docs/methods.md,
/// "Canonicalisers"): every word (and action) of another factor's pair is replaced by one
/// representative of that pair. Any choice is a valid canonicaliser, but a pretrained,
/// non-equivariant model sees different inputs, so the results differ (docs/scan-official.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Collapse {
    /// The official EquiSCAN representatives: jump/JUMP, right/TURN_RIGHT, up/TURN_UP.
    Official,
    /// The smaller vocabulary id of the pair (jump, left, down with equirun's sorted
    /// vocabularies): what `scan finetune` did before the official choice was adopted.
    OrbitMin,
}

impl Collapse {
    pub fn name(&self) -> &'static str {
        match self {
            Collapse::Official => "official",
            Collapse::OrbitMin => "orbit-min",
        }
    }
}

/// The official EquiSCAN representative of each SCAN swap: (factor, command word, action).
pub const OFFICIAL_REPRESENTATIVES: &[(&str, &str, &str)] = &[
    ("verb", "jump", "JUMP"),
    ("direction-rl", "right", "TURN_RIGHT"),
    ("direction-ud", "up", "TURN_UP"),
];

/// Per factor i, the maps (input ids, output ids) that send every token of another factor's
/// pair to that factor's official representative. The pairs are disjoint, so each map is
/// invariant to every other factor and commutes with factor i's swap: a valid `c₋ᵢ`.
pub fn official_collapse_maps(
    group: &FiniteGroup<TokenPerm>,
    input: &Vocab,
    output: &Vocab,
) -> Result<(Vec<Vec<u32>>, Vec<Vec<u32>>)> {
    let (n_in, n_out) = (input.len(), output.len());
    let mut ins = Vec::new();
    let mut outs = Vec::new();
    for i in 0..group.n_factors() {
        let mut mi: Vec<u32> = (0..n_in as u32).collect();
        let mut mo: Vec<u32> = (0..n_out as u32).collect();
        for (j, f) in group.factors().iter().enumerate() {
            if j == i {
                continue;
            }
            let (_, w, a) = OFFICIAL_REPRESENTATIVES
                .iter()
                .find(|(n, ..)| *n == f.name)
                .ok_or_else(|| {
                    anyhow!("no official representative for SCAN factor '{}'", f.name)
                })?;
            let wi = input
                .id(w)
                .ok_or_else(|| anyhow!("the command vocabulary lacks '{w}'"))?;
            let ai = output
                .id(a)
                .ok_or_else(|| anyhow!("the action vocabulary lacks '{a}'"))?;
            // every element of factor j moves exactly the tokens of its pair
            for &g in &group.factor_elements(j) {
                let e = group.element(g);
                for t in 0..n_in {
                    if e.input[t] != t as u32 {
                        mi[t] = wi;
                    }
                }
                for t in 0..n_out {
                    if e.output[t] != t as u32 {
                        mo[t] = ai;
                    }
                }
            }
        }
        ins.push(mi);
        outs.push(mo);
    }
    Ok((ins, outs))
}

/// The token symmetry of a SCAN seq2seq on packed rows (`in_cols` command columns, then the
/// target for teacher forcing), with multi-equitune's canonicaliser chosen by `collapse`.
pub fn scan_symmetry(
    group: FiniteGroup<TokenPerm>,
    input: &Vocab,
    output: &Vocab,
    in_cols: usize,
    collapse: Collapse,
) -> Result<TokenSymmetry> {
    let maps = match collapse {
        Collapse::Official => Some(official_collapse_maps(&group, input, output)?),
        Collapse::OrbitMin => None,
    };
    let sym = TokenSymmetry::new(group, false, Some(in_cols));
    Ok(match maps {
        Some((mi, mo)) => sym.with_collapse_io(mi, mo),
        None => sym,
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// multi-equitune's SCAN canonicaliser sends the other factors' words to the official
    /// representatives (run→jump, left→right, down→up; the actions likewise), on the command
    /// and on the teacher-forcing target, and is a valid c₋ᵢ (invariant to the other factors,
    /// commuting with its own). `scan finetune` used the orbit minimum (right→left, up→down),
    /// which docs/methods.md did not describe and the official code does not do.
    #[test]
    fn official_collapse_representatives() {
        use crate::equi::Symmetry;
        let words = [
            "jump", "run", "walk", "look", "turn", "left", "right", "up", "down", "and", "after",
            "twice", "thrice", "opposite", "around",
        ];
        let acts = [
            "JUMP",
            "RUN",
            "WALK",
            "LOOK",
            "TURN_LEFT",
            "TURN_RIGHT",
            "TURN_UP",
            "TURN_DOWN",
        ];
        let iv = Vocab::from_tokens(words);
        let ov = Vocab::from_tokens(acts);
        let group =
            crate::groups::scan::scan_group("verb,direction-rl,direction-ud", &iv, &ov).unwrap();
        let cmd = ["turn", "left", "and", "run", "down"];
        let tgt = ["TURN_LEFT", "TURN_DOWN", "RUN"];
        let in_cols = cmd.len() + 1;
        let row: Vec<u32> = iv
            .encode(&cmd)
            .unwrap()
            .into_iter()
            .chain([EOS])
            .chain(ov.encode(&tgt).unwrap())
            .collect();
        let mut packed = row.clone();
        packed.resize(in_cols + 50, EOS);
        let x = candle_core::Tensor::from_vec(packed, (1, in_cols + 50), &candle_core::Device::Cpu)
            .unwrap();
        let decode = |t: &candle_core::Tensor| {
            let v = t.to_vec2::<u32>().unwrap().remove(0);
            let c = iv.decode(&v[..cmd.len()]).unwrap().join(" ");
            let a = ov
                .decode(&v[in_cols..in_cols + tgt.len()])
                .unwrap()
                .join(" ");
            format!("{c} | {a}")
        };
        let sym = scan_symmetry(group.clone(), &iv, &ov, in_cols, Collapse::Official).unwrap();
        let expect = [
            "turn right and run up | TURN_RIGHT TURN_UP RUN", // verb branch
            "turn left and jump up | TURN_LEFT TURN_UP JUMP", // direction-rl branch
            "turn right and jump down | TURN_RIGHT TURN_DOWN JUMP", // direction-ud branch
        ];
        for (i, e) in expect.iter().enumerate() {
            assert_eq!(
                decode(&sym.canonicalize_except(i, &x).unwrap()),
                *e,
                "factor {i}"
            );
        }
        // a valid canonicaliser: c(h·x) = c(x) for h in the other factors, c(g·x) = g·c(x) for g
        // in factor i
        for i in 0..3 {
            let c = |t: &candle_core::Tensor| sym.canonicalize_except(i, t).unwrap();
            let base = decode(&c(&x));
            for h in sym.complement_elements(i) {
                assert_eq!(decode(&c(&sym.act_input(h, &x).unwrap())), base);
            }
            for g in sym.factor_elements(i) {
                assert_eq!(
                    decode(&c(&sym.act_input(g, &x).unwrap())),
                    decode(&sym.act_input(g, &c(&x)).unwrap())
                );
            }
        }
        // the former choice differs exactly on right/up
        let old = scan_symmetry(group, &iv, &ov, in_cols, Collapse::OrbitMin).unwrap();
        assert_eq!(
            decode(&old.canonicalize_except(0, &x).unwrap()),
            "turn left and run down | TURN_LEFT TURN_DOWN RUN"
        );
    }

    /// The official SCAN directory: `$EQUIRUN_DATA/scan` (or `$EQUIRUN_DATA`
    /// itself if it holds `tasks.txt`), else `<crate>/../shared/data/scan`.
    fn official_scan_dir() -> std::result::Result<PathBuf, String> {
        let mut tried = Vec::new();
        if let Ok(d) = std::env::var(DATA_ENV) {
            let d = resolve_scan_dir(Path::new(&d));
            if d.join("tasks.txt").is_file() {
                return Ok(d);
            }
            tried.push(d);
        }
        let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/scan"));
        if d.join("tasks.txt").is_file() {
            return Ok(d);
        }
        tried.push(d);
        Err(format!(
            "official SCAN data not found (tried {})",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    macro_rules! scan_dir_or_skip {
        () => {
            match official_scan_dir() {
                Ok(d) => d,
                Err(reason) => {
                    eprintln!("skipping: {reason}");
                    return;
                }
            }
        };
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "equirun-scan-test-{}-{}-{:?}",
            tag,
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn ex(cmd: &str, acts: &str) -> ScanExample {
        ScanExample {
            command: cmd.split_whitespace().map(String::from).collect(),
            actions: acts.split_whitespace().map(String::from).collect(),
        }
    }

    fn as_map(v: &[ScanExample]) -> HashMap<String, Vec<String>> {
        v.iter()
            .map(|e| (e.command_str(), e.actions.clone()))
            .collect()
    }

    // ----- reader / writer -----

    #[test]
    fn parse_good_line() {
        let p = Path::new("x.txt");
        let e = parse_scan_line(
            "IN: jump around left twice OUT: I_TURN_LEFT I_JUMP\r\n",
            p,
            1,
        )
        .unwrap();
        assert_eq!(e.command, vec!["jump", "around", "left", "twice"]);
        assert_eq!(e.actions, vec!["TURN_LEFT", "JUMP"]);
        assert_eq!(
            e.to_line(),
            "IN: jump around left twice OUT: I_TURN_LEFT I_JUMP"
        );
        assert_eq!(strip_action_prefix("I_TURN_LEFT"), "TURN_LEFT");
        assert_eq!(strip_action_prefix("WALK"), "WALK");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let p = Path::new("/some/dir/tasks_bad.txt");
        let cases = [
            ("walk OUT: I_WALK", "IN:"),
            ("IN: walk I_WALK", "OUT:"),
            ("IN: OUT: I_WALK", "non-empty command"),
            ("IN: walk OUT:", "at least one action"),
            ("IN: walk OUT: WALK", "I_"),
            ("IN: walk OUT: I_WALK OUT: I_WALK", "exactly one"),
            ("IN: walk IN: run OUT: I_WALK", "single `IN:`"),
            ("garbage", "IN:"),
        ];
        for (line, needle) in cases {
            let err = parse_scan_line(line, p, 17).unwrap_err().to_string();
            assert!(err.contains("/some/dir/tasks_bad.txt:17"), "{err}");
            assert!(err.contains("expected"), "{err}");
            assert!(err.contains(needle), "{line:?} -> {err}");
        }

        // Through the file reader: 1-based line numbers; blank trailing lines are fine.
        let d = tmp_dir("malformed");
        let f = d.join("bad.txt");
        fs::write(
            &f,
            "IN: walk OUT: I_WALK\nIN: run OUT: I_RUN\nIN: jump I_JUMP\n",
        )
        .unwrap();
        let err = read_scan_file(&f).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3:", f.display())), "{err}");
        assert!(err.contains("OUT:"), "{err}");

        fs::write(&f, "IN: walk OUT: I_WALK\nIN: run OUT: I_RUN\n\n\n  \n").unwrap();
        assert_eq!(read_scan_file(&f).unwrap().len(), 2);

        fs::write(&f, "IN: walk OUT: I_WALK\n\nIN: run OUT: I_RUN\n").unwrap();
        let err = read_scan_file(&f).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:2:", f.display())), "{err}");

        let missing = d.join("nope.txt");
        let err = format!("{:#}", read_scan_file(&missing).unwrap_err());
        assert!(err.contains("nope.txt"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_read_roundtrip_atomic() {
        let d = tmp_dir("roundtrip");
        let f = d.join("sub").join("out.txt");
        let data = vec![
            ex("walk left", "TURN_LEFT WALK"),
            ex(
                "turn around up twice",
                "TURN_UP TURN_UP TURN_UP TURN_UP TURN_UP TURN_UP TURN_UP TURN_UP",
            ),
        ];
        write_scan_file(&f, &data).unwrap();
        let text = fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("IN: walk left OUT: I_TURN_LEFT I_WALK\n"),
            "{text}"
        );
        assert_eq!(read_scan_file(&f).unwrap(), data);
        // Overwrite in place; no temporary file is left behind.
        write_scan_file(&f, &data[..1]).unwrap();
        assert_eq!(read_scan_file(&f).unwrap(), data[..1].to_vec());
        let names: Vec<_> = fs::read_dir(f.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["out.txt".to_string()]);
        fs::remove_dir_all(&d).unwrap();
    }

    // ----- split files -----

    #[test]
    fn split_files_errors() {
        let d = tmp_dir("splits");
        let err = split_files(&d, "bogus").unwrap_err().to_string();
        for s in SPLITS {
            assert!(err.contains(s), "{err}");
        }
        let err = split_files(&d, "add-jump").unwrap_err().to_string();
        assert!(err.contains("tasks_train_addprim_jump.txt"), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
        assert!(err.contains(DATA_ENV), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn split_files_official() {
        let dir = scan_dir_or_skip!();
        let expected = [
            ("simple", 16_728, 4_182),
            ("add-jump", 14_670, 7_706),
            ("add_jump", 14_670, 7_706),
            ("add-turn-left", 21_890, 1_208),
            ("length", 16_990, 3_920),
            ("around-right", 15_225, 4_476),
            ("around_right", 15_225, 4_476),
        ];
        for (split, ntrain, ntest) in expected {
            // Both the SCAN dir and its parent are accepted.
            for base in [dir.clone(), dir.parent().unwrap().to_path_buf()] {
                let (tr, te) = split_files(&base, split).unwrap();
                assert!(tr.is_file() && te.is_file());
                if base == dir {
                    assert_eq!(read_scan_file(&tr).unwrap().len(), ntrain, "{split}");
                    assert_eq!(read_scan_file(&te).unwrap().len(), ntest, "{split}");
                }
            }
        }
    }

    // ----- generator -----

    fn stats(v: &[ScanExample]) -> (usize, usize, usize, usize, usize) {
        let vin = Vocab::from_examples(v, Side::Input);
        let vout = Vocab::from_examples(v, Side::Output);
        (
            v.len(),
            vin.len() - 2,
            vout.len() - 2,
            v.iter().map(|e| e.command.len()).max().unwrap(),
            v.iter().map(|e| e.actions.len()).max().unwrap(),
        )
    }

    #[test]
    fn generator_counts() {
        let t = std::time::Instant::now();
        let scan = generate_commands(&SCAN_DIRECTIONS);
        let scan2 = generate_commands(&SCAN_II_DIRECTIONS);
        eprintln!("generated SCAN + SCAN-II in {:?}", t.elapsed());
        assert_eq!(stats(&scan), (20_910, 13, 6, 9, 48));
        assert_eq!(stats(&scan2), (73_920, 15, 8, 9, 48));
        let words: Vec<String> = Vocab::from_examples(&scan2, Side::Input).tokens()[2..].to_vec();
        assert_eq!(
            words,
            "after and around down jump left look opposite right run thrice turn twice up walk"
                .split(' ')
                .collect::<Vec<_>>()
        );
        // Canonical order: strictly increasing command strings (sorted, unique).
        for v in [&scan, &scan2] {
            assert!(v
                .windows(2)
                .all(|w| w[0].command_str() < w[1].command_str()));
        }
        // Deterministic.
        assert_eq!(generate_commands(&SCAN_II_DIRECTIONS), scan2);
        // `turn` alone is not a command, `turn opposite up` is.
        let m = as_map(&scan2);
        assert!(!m.contains_key("turn"));
        assert_eq!(m["turn opposite up"], vec!["TURN_UP", "TURN_UP"]);
        assert_eq!(m["turn up"], vec!["TURN_UP"]);
        assert_eq!(m["walk down"], vec!["TURN_DOWN", "WALK"]);
        assert_eq!(
            m["jump opposite down"],
            vec!["TURN_DOWN", "TURN_DOWN", "JUMP"]
        );
        assert_eq!(
            m["look around up"],
            "TURN_UP LOOK TURN_UP LOOK TURN_UP LOOK TURN_UP LOOK"
                .split(' ')
                .collect::<Vec<_>>()
        );
        assert_eq!(
            m["run twice after turn down"],
            vec!["TURN_DOWN", "RUN", "RUN"]
        );
        assert_eq!(
            m["run twice and turn down"],
            vec!["RUN", "RUN", "TURN_DOWN"]
        );
        // SCAN is a subset of SCAN-II with identical semantics.
        for e in &scan {
            assert_eq!(m[&e.command_str()], e.actions);
        }
    }

    #[test]
    fn generator_reproduces_official_tasks() {
        let dir = scan_dir_or_skip!();
        let official = read_scan_file(&dir.join("tasks.txt")).unwrap();
        assert_eq!(official.len(), 20_910);
        let off_map = as_map(&official);
        assert_eq!(
            off_map.len(),
            20_910,
            "official tasks.txt has duplicate commands"
        );
        let gen = generate_commands(&SCAN_DIRECTIONS);
        let gen_map = as_map(&gen);
        assert_eq!(gen_map.len(), 20_910);
        let off_keys: BTreeSet<_> = off_map.keys().collect();
        let gen_keys: BTreeSet<_> = gen_map.keys().collect();
        assert_eq!(off_keys, gen_keys);
        for (k, v) in &off_map {
            assert_eq!(&gen_map[k], v, "actions differ for {k:?}");
        }
        // As a set of whole lines too.
        let a: HashSet<String> = official.iter().map(|e| e.to_line()).collect();
        let b: HashSet<String> = gen.iter().map(|e| e.to_line()).collect();
        assert_eq!(a, b);
    }

    /// The brendenlake add-prim files are "substring minus the bare primitive"
    /// splits of the generated SCAN set.
    #[test]
    fn generator_reproduces_official_addprim() {
        let dir = scan_dir_or_skip!();
        let gen = generate_commands(&SCAN_DIRECTIONS);
        for (split, phrase) in [("add-jump", "jump"), ("add-turn-left", "turn left")] {
            let (tr, te) = split_files(&dir, split).unwrap();
            let train: HashSet<String> = read_scan_file(&tr)
                .unwrap()
                .iter()
                .map(|e| e.to_line())
                .collect();
            let test: HashSet<String> = read_scan_file(&te)
                .unwrap()
                .iter()
                .map(|e| e.to_line())
                .collect();
            let exp_test: HashSet<String> = gen
                .iter()
                .filter(|e| contains_phrase(e, phrase) && e.command_str() != phrase)
                .map(|e| e.to_line())
                .collect();
            let exp_train: HashSet<String> = gen
                .iter()
                .filter(|e| !contains_phrase(e, phrase) || e.command_str() == phrase)
                .map(|e| e.to_line())
                .collect();
            assert_eq!(test, exp_test, "{split} test");
            assert_eq!(train, exp_train, "{split} train");
        }
    }

    // ----- SCAN-II -----

    #[test]
    fn scan_ii_counts_and_overlaps() {
        let s = scan_ii_splits(0);
        assert_eq!(s.train.len(), 51_168);
        let uniq: HashSet<&ScanExample> = s.train.iter().collect();
        assert_eq!(uniq.len(), 43_368);
        for p in SCAN_II_HELD_OUT {
            assert_eq!(
                s.train.iter().filter(|e| e.command_str() == p).count(),
                2_601,
                "{p}"
            );
        }
        // No other train line contains a held-out phrase.
        assert_eq!(
            s.train
                .iter()
                .filter(|e| SCAN_II_HELD_OUT.iter().any(|p| contains_phrase(e, p)))
                .count(),
            3 * 2_601
        );

        let names: Vec<&str> = s.tests.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, SCAN_II_TEST_SPLITS.to_vec());
        let sizes: Vec<usize> = s.tests.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(sizes, vec![26_949, 2_289, 2_289, 31_527]);

        let set = |id: &str| -> HashSet<String> {
            s.test(id)
                .unwrap()
                .iter()
                .map(|e| e.command_str())
                .collect()
        };
        let (j, tl, tu) = (set("jump"), set("turn_left"), set("turn_up"));
        assert_eq!(j.intersection(&tl).count(), 468);
        assert_eq!(j.intersection(&tu).count(), 468);
        assert_eq!(tl.intersection(&tu).count(), 36);
        let comb = s.test("turn_up_jump_turn_left").unwrap();
        let comb_set: HashSet<String> = comb.iter().map(|e| e.command_str()).collect();
        assert_eq!(comb_set.len(), 30_555);
        assert_eq!(43_365 + 30_555, 73_920);
        // Concatenation order turn_up, jump, turn_left.
        let mut cat = s.test("turn_up").unwrap().to_vec();
        cat.extend_from_slice(s.test("jump").unwrap());
        cat.extend_from_slice(s.test("turn_left").unwrap());
        assert_eq!(comb, cat.as_slice());
        // Each test split contains its bare primitive (which is also in train).
        for (id, p) in [
            ("jump", "jump"),
            ("turn_left", "turn left"),
            ("turn_up", "turn up"),
        ] {
            assert!(
                s.test(id).unwrap().iter().any(|e| e.command_str() == p),
                "{id}"
            );
        }
    }

    /// The official script tests the phrase against the whole `IN: … OUT: …`
    /// line; testing the command string is equivalent, and so is a word-level test.
    #[test]
    fn substring_test_matches_official_line_test() {
        let data = generate_commands(&SCAN_II_DIRECTIONS);
        for e in &data {
            let line = e.to_line();
            for p in SCAN_II_HELD_OUT {
                let words: Vec<&str> = p.split(' ').collect();
                let word_level = e
                    .command
                    .windows(words.len())
                    .any(|w| w == words.as_slice());
                assert_eq!(line.contains(p), contains_phrase(e, p), "{line}");
                assert_eq!(word_level, contains_phrase(e, p), "{line}");
            }
        }
    }

    #[test]
    fn scan_ii_seeded_determinism() {
        let a = scan_ii_splits(7);
        let b = scan_ii_splits(7);
        let c = scan_ii_splits(8);
        assert_eq!(a.train, b.train);
        assert_eq!(a.tests, b.tests);
        assert_ne!(a.train, c.train);
        // Same multiset regardless of seed.
        let mut x = a.train.clone();
        let mut y = c.train.clone();
        x.sort();
        y.sort();
        assert_eq!(x, y);
        assert_eq!(a.tests, c.tests);
    }

    #[test]
    fn write_generated_files() {
        let d = tmp_dir("generated");
        let got = write_generated("scan", &d.join("scan"), 0).unwrap();
        assert_eq!(got, vec![("tasks.txt".to_string(), 20_910)]);
        let back = read_scan_file(&d.join("scan/tasks.txt")).unwrap();
        assert_eq!(back, generate_commands(&SCAN_DIRECTIONS));

        let got = write_generated("scan-ii", &d.join("scan2"), 3).unwrap();
        let exp: Vec<(String, usize)> = [
            ("train.txt", 51_168),
            ("test_jump.txt", 26_949),
            ("test_turn_left.txt", 2_289),
            ("test_turn_up.txt", 2_289),
            ("test_turn_up_jump_turn_left.txt", 31_527),
        ]
        .iter()
        .map(|(n, c)| (n.to_string(), *c))
        .collect();
        assert_eq!(got, exp);
        let s = scan_ii_splits(3);
        assert_eq!(read_scan_file(&d.join("scan2/train.txt")).unwrap(), s.train);
        for (name, n) in &exp {
            assert_eq!(
                read_scan_file(&d.join("scan2").join(name)).unwrap().len(),
                *n
            );
        }
        let err = write_generated("scan3", &d, 0).unwrap_err().to_string();
        assert!(err.contains("scan-ii"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    // ----- vocab -----

    #[test]
    fn vocab_roundtrip() {
        let data = generate_commands(&SCAN_II_DIRECTIONS);
        let vin = Vocab::from_examples(&data, Side::Input);
        let vout = Vocab::from_examples(&data, Side::Output);
        assert_eq!(vin.len(), 17);
        assert_eq!(vout.len(), 10);
        assert_eq!(vin.id(SOS_TOKEN), Some(SOS));
        assert_eq!(vout.id(EOS_TOKEN), Some(EOS));
        assert_eq!(vin.id("after"), Some(2));
        assert_eq!(vin.id("walk"), Some(16));
        assert_eq!(
            vout.tokens()[2..].to_vec(),
            "JUMP LOOK RUN TURN_DOWN TURN_LEFT TURN_RIGHT TURN_UP WALK"
                .split(' ')
                .collect::<Vec<_>>()
        );
        assert_eq!(vin.id("I_WALK"), None);
        for e in data.iter().step_by(97) {
            let ci = vin.encode(&e.command).unwrap();
            assert_eq!(vin.decode(&ci).unwrap(), e.command);
            let ao = vout.encode(&e.actions).unwrap();
            assert!(ao.iter().all(|&i| i >= 2));
            assert_eq!(vout.decode(&ao).unwrap(), e.actions);
            let mut with = vec![SOS];
            with.extend(vout.encode_with_eos(&e.actions).unwrap());
            with.extend([7, 7]);
            assert_eq!(vout.decode_until_eos(&with).unwrap(), e.actions);
        }
        let err = vin.encode(&["walk", "fly"]).unwrap_err().to_string();
        assert!(err.contains("\"fly\""), "{err}");
        assert!(vin.decode(&[99]).is_err());
        // Order of construction does not matter.
        let rev: Vec<ScanExample> = data.iter().rev().cloned().collect();
        assert_eq!(Vocab::from_examples(&rev, Side::Input), vin);
    }

    #[test]
    fn describe_summary() {
        let s = describe(&generate_commands(&SCAN_II_DIRECTIONS));
        assert_eq!(
            s,
            "73920 examples, input vocab 15 words, output vocab 8 actions, max input 9 words, max output 48 actions"
        );
    }
}
