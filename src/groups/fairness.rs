//! Demographic word-swap groups on a tokenizer's vocabulary (docs/fairness.md, "The vocabulary partition" and "The group"): one cyclic
//! factor per axis (gender, race, orientation …) that rotates every equality set
//! simultaneously, validated as single-token, bijective, disjoint across axes and disjoint from
//! the general words.

use super::perm::{cyclic_factor, TokenPerm};
use super::FiniteGroup;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The word-list file (TOML; the default is embedded).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct WordLists {
    #[serde(default)]
    pub general: Vec<String>,
    pub axes: BTreeMap<String, AxisWords>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AxisWords {
    pub members: Vec<String>,
    pub sets: Vec<Vec<String>>,
    /// Whether a member is the head noun of the demographic phrase (replacing "person"), e.g.
    /// members "man"/"woman". Default: true for an axis named `gender`, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noun: Option<bool>,
    /// Position of the member among the words before the noun (lower first). Default:
    /// orientation 0, race 1, any other axis 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i32>,
}

pub const DEFAULT_WORDLISTS: &str = include_str!("../data/wordlists/fairness.toml");

impl WordLists {
    pub fn default_lists() -> WordLists {
        toml::from_str(DEFAULT_WORDLISTS).expect("embedded word lists parse")
    }
    pub fn from_file(path: &Path) -> Result<WordLists> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading word lists {}", path.display()))?;
        let w: WordLists = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid word-list TOML", path.display()))?;
        for (name, ax) in &w.axes {
            if ax.members.len() < 2 {
                bail!(
                    "{}: axis '{name}' needs at least two members",
                    path.display()
                );
            }
            for s in &ax.sets {
                if s.len() != ax.members.len() {
                    bail!("{}: axis '{name}': equality set {:?} has {} words but the axis has {} members", path.display(), s, s.len(), ax.members.len());
                }
            }
        }
        Ok(w)
    }
}

/// One validated axis: token ids per equality set, member order.
#[derive(Clone, Debug, Serialize)]
pub struct Axis {
    pub name: String,
    pub members: Vec<String>,
    pub sets: Vec<Vec<String>>,
    pub ids: Vec<Vec<u32>>,
    /// The word list's `noun` (recorded only when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noun: Option<bool>,
    /// The word list's `order` (recorded only when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<i32>,
}

impl Axis {
    /// Whether this axis' member is the phrase's head noun.
    pub fn is_noun(&self) -> bool {
        self.noun.unwrap_or(self.name == "gender")
    }
    /// Position of this axis' member among the words before the noun.
    pub fn phrase_order(&self) -> i32 {
        self.order.unwrap_or(match self.name.as_str() {
            "orientation" => 0,
            "race" => 1,
            _ => 2,
        })
    }
}

/// The resolved fairness setting recorded in result JSON.
#[derive(Clone, Debug, Serialize)]
pub struct FairnessGroups {
    pub axes: Vec<Axis>,
    pub general_words: Vec<String>,
    pub general_ids: Vec<u32>,
}

/// Encodes `word` to exactly one token id or fails naming the word.
pub fn single_token(tok: &tokenizers::Tokenizer, word: &str, axis: &str) -> Result<u32> {
    let enc = tok
        .encode(word, false)
        .map_err(|e| anyhow!("tokenizing {word:?}: {e}"))?;
    let ids = enc.get_ids();
    if ids.len() != 1 {
        bail!(
            "multi-token word {word:?} in {axis}: it encodes to {} tokens {:?}; every equality word must be a single token of this model's tokenizer (edit the word list, --wordlists FILE)",
            ids.len(),
            ids
        );
    }
    Ok(ids[0])
}

/// Builds and validates the product group for `axes` (in the given order).
pub fn fairness_group(
    axes: &[String],
    lists: &WordLists,
    tok: &tokenizers::Tokenizer,
    vocab: usize,
) -> Result<(FiniteGroup<TokenPerm>, FairnessGroups)> {
    if axes.is_empty() {
        bail!(
            "no demographic axis given: use --groups with one or more of {}",
            lists.axes.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut owner: HashMap<u32, String> = HashMap::new();
    let mut general_ids = Vec::new();
    for w in &lists.general {
        let id = single_token(tok, w, "the general words")?;
        owner.insert(id, "the general words".into());
        general_ids.push(id);
    }
    let mut resolved = Vec::new();
    let mut factors = Vec::new();
    for name in axes {
        if resolved.iter().any(|a: &Axis| &a.name == name) {
            bail!("axis '{name}' is listed twice in --groups");
        }
        let ax = lists.axes.get(name).ok_or_else(|| {
            anyhow!(
                "unknown demographic axis '{name}': the word lists define {}",
                lists.axes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let mut ids = Vec::new();
        for set in &ax.sets {
            let mut row = Vec::new();
            for w in set {
                let id = single_token(tok, w, &format!("axis '{name}'"))?;
                if id as usize >= vocab {
                    bail!(
                        "word {w:?} has token id {id}, outside the model's vocabulary of {vocab}"
                    );
                }
                if let Some(o) = owner.get(&id) {
                    if *o == format!("axis '{name}'") {
                        let first = ax
                            .sets
                            .iter()
                            .flatten()
                            .find(|v| single_token(tok, v, "").ok() == Some(id) && *v != w);
                        match first {
                            Some(v) => bail!("axis '{name}': words {v:?} and {w:?} are the same token {id}; every word of an axis must be a distinct token (edit the word list, --wordlists FILE)"),
                            None => bail!("axis '{name}': word {w:?} (token {id}) is listed twice; every word may appear once in an axis (edit the word list, --wordlists FILE)"),
                        }
                    }
                    bail!("word {w:?} (token {id}) of axis '{name}' is also in {o}: a word may belong to one axis only and not to the general words");
                }
                owner.insert(id, format!("axis '{name}'"));
                row.push(id);
            }
            ids.push(row);
        }
        let gen = TokenPerm::from_cycles(vocab, vocab, &ids, &ids)?;
        factors.push(cyclic_factor(
            name,
            &format!("{name}: rotate {:?} (member j -> j+1)", ax.sets),
            gen,
        )?);
        resolved.push(Axis {
            name: name.clone(),
            members: ax.members.clone(),
            sets: ax.sets.clone(),
            ids,
            noun: ax.noun,
            order: ax.order,
        });
    }
    let nouns: Vec<&str> = resolved
        .iter()
        .filter(|a| a.is_noun())
        .map(|a| a.name.as_str())
        .collect();
    if nouns.len() > 1 {
        bail!(
            "axes {} all name the demographic's noun; mark all but one with `noun = false` in the word list (--wordlists FILE)",
            nouns.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(" and ")
        );
    }
    let group = FiniteGroup::product(&axes.join(","), factors)?;
    Ok((
        group,
        FairnessGroups {
            axes: resolved,
            general_words: lists.general.clone(),
            general_ids,
        },
    ))
}

impl FairnessGroups {
    /// Canonicaliser maps per factor (docs/fairness.md, "The wrappers on next-token logits"): for branch `i`, every token of an
    /// equality set of another axis goes to that set's first word.
    pub fn collapse_maps(&self, vocab: usize) -> Vec<Vec<u32>> {
        (0..self.axes.len())
            .map(|i| {
                let mut m: Vec<u32> = (0..vocab as u32).collect();
                for (j, ax) in self.axes.iter().enumerate() {
                    if j != i {
                        for set in &ax.ids {
                            for &t in set {
                                m[t as usize] = set[0];
                            }
                        }
                    }
                }
                m
            })
            .collect()
    }
}
