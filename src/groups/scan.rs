//! SCAN symmetry groups: swaps of command words paired with swaps of action tokens
//! (docs/methods.md, "Word swaps (SCAN)"), and their products (`verb,direction-rl,direction-ud` = 8 elements).

use super::perm::{cyclic_factor, TokenPerm};
use super::FiniteGroup;
use crate::data::scan::Vocab;
use anyhow::{anyhow, bail, Result};

/// (name, input word pair, output action pair, description)
pub const SCAN_SWAPS: &[(&str, [&str; 2], [&str; 2], &str)] = &[
    (
        "verb",
        ["jump", "run"],
        ["JUMP", "RUN"],
        "verb: jump<->run and JUMP<->RUN",
    ),
    (
        "direction-rl",
        ["left", "right"],
        ["TURN_LEFT", "TURN_RIGHT"],
        "direction-rl: left<->right and TURN_LEFT<->TURN_RIGHT",
    ),
    (
        "direction-ud",
        ["up", "down"],
        ["TURN_UP", "TURN_DOWN"],
        "direction-ud: up<->down and TURN_UP<->TURN_DOWN",
    ),
];

/// Builds the product of named SCAN swaps, e.g. `verb`, `direction-rl`, `verb,direction-rl,direction-ud`
/// (`direction` is an alias of `direction-rl`; `x` also separates factors).
pub fn scan_group(spec: &str, input: &Vocab, output: &Vocab) -> Result<FiniteGroup<TokenPerm>> {
    let names: Vec<String> = spec
        .split([',', 'x'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s == "direction" {
                "direction-rl".to_string()
            } else {
                s
            }
        })
        .collect();
    if names.is_empty() {
        bail!(
            "empty SCAN group: use verb, direction-rl, direction-ud or a comma-separated product"
        );
    }
    let mut factors = Vec::new();
    for name in &names {
        let (n, iw, ow, desc) = SCAN_SWAPS.iter().find(|(n, ..)| n == name).ok_or_else(|| {
            anyhow!(
                "unknown SCAN group '{name}': valid factors are {} (combine with ',', e.g. verb,direction-rl,direction-ud)",
                SCAN_SWAPS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            )
        })?;
        let id = |v: &Vocab, w: &str, side: &str| {
            v.id(w).ok_or_else(|| {
                anyhow!(
                    "SCAN group '{n}' needs the {side} token '{w}', which this dataset does not have \
                     (direction-ud needs SCAN-II's up/down)"
                )
            })
        };
        let gen = TokenPerm::from_cycles(
            input.len(),
            output.len(),
            &[vec![
                id(input, iw[0], "command")?,
                id(input, iw[1], "command")?,
            ]],
            &[vec![
                id(output, ow[0], "action")?,
                id(output, ow[1], "action")?,
            ]],
        )?;
        factors.push(cyclic_factor(n, desc, gen)?);
    }
    FiniteGroup::product(&names.join(","), factors)
}
