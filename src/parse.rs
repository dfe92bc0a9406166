//! Small, bounded parsers for user-supplied lists (no panics, no unbounded expansion).

use anyhow::{bail, Result};

/// The most seeds one `--seeds` list may expand to. Every seed is a full run (minutes to hours
/// each), so a list longer than this is a typo such as `0-4000000000`, not an experiment; the
/// bound is checked before anything is expanded.
pub const MAX_SEEDS: usize = 10_000;

/// Parses `0,1,2`, `0-4` (inclusive) or a mix (`0-2,7`) into distinct seeds, in order.
///
/// Errors (never panics) on an empty list, a malformed number, a negative seed, a range whose
/// end is before its start, a seed listed twice, and a list that would expand to more than
/// [`MAX_SEEDS`] seeds.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let shown = |p: &str| -> String {
        let mut t: String = p.chars().take(40).collect();
        if p.chars().count() > 40 {
            t.push('…');
        }
        t
    };
    let num = |t: &str, part: &str| -> Result<u64> {
        let t = t.trim();
        if t.starts_with('-') {
            bail!(
                "bad seed '{}': seeds are non-negative integers",
                shown(part)
            );
        }
        match t.parse::<u64>() {
            Ok(v) => Ok(v),
            Err(_) => bail!(
                "bad seed '{}' in '{}': expected a non-negative integer (e.g. 0,1,2 or 0-4)",
                shown(t),
                shown(part)
            ),
        }
    };
    let mut out: Vec<u64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.strip_prefix('-') {
            Some(_) => bail!(
                "bad seed '{}': seeds are non-negative integers (e.g. 0,1,2 or 0-4)",
                shown(part)
            ),
            None => match part.split_once('-') {
                Some((a, b)) => (num(a, part)?, num(b, part)?),
                None => {
                    let v = num(part, part)?;
                    (v, v)
                }
            },
        };
        if b < a {
            bail!("bad seed range '{}': end before start", shown(part));
        }
        // the count of this part, checked before expanding it
        let count = (b - a).saturating_add(1);
        if count > (MAX_SEEDS - out.len()) as u64 {
            bail!(
                "seed list '{}' expands to more than {MAX_SEEDS} seeds (at '{}'); each seed is \
                 a full run: give a shorter range such as 0-4",
                shown(s.trim()),
                shown(part)
            );
        }
        for v in a..=b {
            if !seen.insert(v) {
                bail!("seed {v} is listed twice in '{}'", shown(s.trim()));
            }
            out.push(v);
        }
    }
    if out.is_empty() {
        bail!("no seeds given: use e.g. --seeds 0,1,2 or 0-4");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds() {
        assert_eq!(parse_seeds("0,1,2").unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_seeds(" 0-2 , 7").unwrap(), vec![0, 1, 2, 7]);
        assert_eq!(parse_seeds("5").unwrap(), vec![5]);
        assert_eq!(parse_seeds("0-9999").unwrap().len(), MAX_SEEDS);
        for bad in [
            "",
            ",",
            "0-10000",
            "0-18446744073709551615",
            "18446744073709551615-0",
            "0-4000000000",
            "-1",
            "1--2",
            "0,0",
            "0-3,2",
            "a",
            "1-",
            "-",
            "99999999999999999999999",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_seeds("0-4000000000").unwrap_err().to_string();
        assert!(e.contains("10000"), "{e}");
    }

    #[test]
    fn block_counts_and_sizes() {
        let names: Vec<String> = [
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "text_model.encoder.layers.1.mlp.fc1.weight",
            "text_model.encoder.layers.x.bogus",
            "vision_model.encoder.layers.0.mlp.fc1.weight",
            "h.3.attn.c_attn.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(block_count(&names, "text_model.encoder.layers."), 2);
        assert_eq!(block_count(&names, "vision_model.encoder.layers."), 1);
        assert_eq!(block_count(&names, "h."), 4);
        assert_eq!(block_count(&names, "nothing."), 0);
        let w = std::path::Path::new("w.safetensors");
        let p = ["text_model.encoder.layers."];
        assert!(check_block_count(&names, w, "config.json", "k", 2, &p).is_ok());
        let e = check_block_count(&names, w, "config.json", "k", 1, &p).unwrap_err();
        assert!(e.to_string().contains("k = 1") && e.to_string().contains("has 2 layers"));
        assert!(check_block_count(&names, w, "config.json", "k", 3, &["nothing."]).is_ok());
        assert!(check_sizes("c.json", &[("a", 0, 1, 4)])
            .unwrap_err()
            .to_string()
            .contains("a is 0"));
        assert!(check_sizes("c.json", &[("a", 5, 1, 4)]).is_err());
        assert!(check_heads("c.json", "w", 64, "h", 3).is_err());
        assert!(check_heads("c.json", "w", 64, "h", 0).is_err());
        assert!(check_heads("c.json", "w", 64, "h", 4).is_ok());
    }
}

/// The largest safetensors JSON header read (100 MB; real headers are a few hundred kB).
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// The tensor names of a safetensors file, read from its JSON header only (no mmap). Errors
/// name the file.
pub fn safetensors_names(path: &std::path::Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open weights file {}: {e}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| {
        anyhow::anyhow!(
            "weights file {} is not safetensors (shorter than its 8-byte header length)",
            path.display()
        )
    })?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > MAX_SAFETENSORS_HEADER {
        bail!(
            "weights file {} is not safetensors (header length {n})",
            path.display()
        );
    }
    let mut header = Vec::new();
    f.take(n).read_to_end(&mut header)?;
    if header.len() as u64 != n {
        bail!(
            "weights file {} is truncated inside its header",
            path.display()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        anyhow::anyhow!(
            "weights file {} has a corrupt safetensors header: {e}",
            path.display()
        )
    })?;
    let obj = v.as_object().ok_or_else(|| {
        anyhow::anyhow!(
            "weights file {} has a corrupt safetensors header (not an object)",
            path.display()
        )
    })?;
    Ok(obj
        .keys()
        .filter(|k| k.as_str() != "__metadata__")
        .cloned()
        .collect())
}

/// How many numbered blocks `prefix{i}.…` the names hold: 1 + the largest `i` (0 if none).
pub fn block_count(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Checks that a config's layer count (`key` in `config_file`) matches the numbered blocks
/// (`prefix{i}.`, under any of `prefixes`) in the weights: more blocks in the weights than
/// the config says would otherwise be silently ignored; fewer would fail later with a
/// less clear "tensor not found". Names without any such block are accepted (the loader's
/// own tensor checks report them).
pub fn check_block_count(
    names: &[String],
    weights: &std::path::Path,
    config_file: &str,
    key: &str,
    configured: usize,
    prefixes: &[&str],
) -> Result<()> {
    let (found, prefix) = prefixes
        .iter()
        .map(|p| (block_count(names, p), *p))
        .max_by_key(|(n, _)| *n)
        .unwrap_or((0, ""));
    if found == 0 || found == configured {
        return Ok(());
    }
    bail!(
        "{config_file}: {key} = {configured}, but the weights file {} has {found} layers \
         ({prefix}0 … {prefix}{}); the config does not belong to these weights (extra layers \
         would be silently ignored, missing ones read as absent): fix {key} or use the \
         matching config",
        weights.display(),
        found - 1
    )
}

/// Checks config sizes: each `(key, value, min, max)` must satisfy `min <= value <= max`.
/// Errors name `config_file` and the key.
pub fn check_sizes(config_file: &str, sizes: &[(&str, usize, usize, usize)]) -> Result<()> {
    for &(key, v, lo, hi) in sizes {
        if v < lo || v > hi {
            if v == 0 {
                bail!("{config_file}: {key} is 0; it must be at least {lo}");
            }
            bail!("{config_file}: {key} = {v} is outside the supported range {lo}..={hi}");
        }
    }
    Ok(())
}

/// Checks that `heads` (key `heads_key`) divides `width` (key `width_key`).
pub fn check_heads(
    config_file: &str,
    width_key: &str,
    width: usize,
    heads_key: &str,
    heads: usize,
) -> Result<()> {
    if heads == 0 {
        bail!("{config_file}: {heads_key} is 0; it must be at least 1");
    }
    if width % heads != 0 {
        bail!(
            "{config_file}: {width_key} = {width} is not divisible by {heads_key} = {heads} \
             (each attention head gets width / heads channels)"
        );
    }
    Ok(())
}
