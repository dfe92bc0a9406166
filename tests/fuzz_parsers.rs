//! Property tests of the input parsers: arbitrary bytes and strings (and structured near-misses
//! built from each format's own tokens) never panic, and what is accepted is consistent.
//! Case counts per property are in `CASES`; the whole file runs in a few seconds in release.

use equirun::data::images::{parse_cifar_labels, parse_idx_header};
use equirun::data::regard::{mask_demographic, parse_annotated, parse_prompt, parse_samples};
use equirun::data::scan::{parse_scan_line, parse_scan_str, Vocab};
use equirun::groups::image::image_group;
use equirun::groups::scan::scan_group;
use equirun::groups::MAX_GROUP_ORDER;
use equirun::parse::{parse_seeds, MAX_SEEDS};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::path::Path;

/// Cases per property: cheap text parsers get many, group building and TOML fewer.
const CASES: u32 = 20_000;
const CASES_HEAVY: u32 = 5_000;

/// A string made of `tokens` (joined by nothing), up to `max` tokens.
fn from_tokens(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(tokens), 0..max).prop_map(|v| v.concat())
}

/// Arbitrary text or a mix of the format's tokens.
fn text_or(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), from_tokens(tokens, max)]
}

const SCAN_TOKENS: &[&str] = &[
    "IN:",
    "OUT:",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "jump",
    "walk",
    "left",
    "twice",
    "I_JUMP",
    "I_TURN_LEFT",
    "I_",
    "I_WALK",
    "é",
    "\u{0}",
    "IN:OUT:",
];

const REGARD_TOKENS: &[&str] = &[
    "-1",
    "0",
    "1",
    "2",
    "3",
    "\t",
    "\n",
    "\r\n",
    " ",
    "The ",
    "Black person",
    "woman",
    " was known for",
    " worked as",
    " had a job as",
    "method\tcontext\tdemographic\ttext\n",
    "gpt2",
    "respect",
    "occupation",
    "é",
    "\u{0}",
    "x",
];

const SEED_TOKENS: &[&str] = &[
    "0",
    "1",
    "7",
    "9",
    "42",
    "4294967295",
    "18446744073709551615",
    "99999999999999999999",
    "-",
    ",",
    " ",
    "+",
    "a",
    "0-4",
    "0-9999",
    "0-10000",
    "5-2",
];

const IMAGE_GROUP_TOKENS: &[&str] = &[
    "rot90", "flip", "hflip", "vflip", "rot180", "id", "none", "x", "×", ",", " ", "rot", "90",
];

const SCAN_GROUP_TOKENS: &[&str] = &[
    "verb",
    "direction",
    "direction-rl",
    "direction-ud",
    ",",
    "x",
    " ",
    "foo",
];

const TOML_TOKENS: &[&str] = &[
    "name = \"s\"\n",
    "command = \"cnn\"\n",
    "command = \"clip\"\n",
    "seeds = [0, 1]\n",
    "seeds = \"0-2\"\n",
    "seeds = \"0,0\"\n",
    "seeds = \"0-99999999999\"\n",
    "seeds = -1\n",
    "[args]\n",
    "[grid]\n",
    "group = [\"rot90\", \"flip\"]\n",
    "method = \"equitune\"\n",
    "[[stage]]\n",
    "run_name = \"r\"\n",
    "out = \"x\"\n",
    "lr = 1e-4\n",
    "lr = nan\n",
    "x = [\n",
    "=",
    "\"",
    "[",
    "]",
    "\n",
    "{",
    "}",
];

fn cfg(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(cfg(CASES))]

    #[test]
    fn scan_lines_never_panic(s in text_or(SCAN_TOKENS, 24), n in any::<usize>()) {
        let p = Path::new("f.txt");
        if let Ok(ex) = parse_scan_line(&s, p, n) {
            prop_assert!(!ex.command.is_empty() && !ex.actions.is_empty());
        }
        let _ = parse_scan_str(&s, p);
    }

    #[test]
    fn regard_tsv_never_panics(s in text_or(REGARD_TOKENS, 24)) {
        if let Ok(v) = parse_annotated(&s, "a.tsv") {
            prop_assert!(!v.is_empty());
        }
        let _ = parse_samples(&s, "s.tsv");
        let _ = parse_prompt(&s);
        let _ = mask_demographic(&s, "Black person");
        let _ = mask_demographic("The Black person was known for", &s);
    }

    #[test]
    fn seed_lists_never_panic(s in text_or(SEED_TOKENS, 12)) {
        if let Ok(v) = parse_seeds(&s) {
            prop_assert!(!v.is_empty() && v.len() <= MAX_SEEDS);
            let mut d = v.clone();
            d.sort();
            d.dedup();
            prop_assert_eq!(d.len(), v.len(), "seeds are distinct");
        }
    }

    #[test]
    fn idx_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64), ndim in 0usize..5) {
        let _ = parse_idx_header(&b, ndim, Path::new("x-idx3-ubyte"));
    }

    /// Valid magic, arbitrary (often huge) dimensions, a little data: accepted only when the
    /// checked product of the dimensions is the data length.
    #[test]
    fn idx_headers_checked(
        dims in proptest::collection::vec(
            prop_oneof![0u32..4, any::<u32>(), Just(u32::MAX), Just(1u32 << 31)], 1..4),
        data in 0usize..48,
    ) {
        let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
        for d in &dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(std::iter::repeat_n(7u8, data));
        match parse_idx_header(&b, dims.len(), Path::new("t10k-images-idx3-ubyte")) {
            Ok(got) => {
                let prod = got.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128));
                prop_assert_eq!(prod, Some(data as u128));
                prop_assert!(got.iter().all(|&d| d > 0));
            }
            Err(e) => prop_assert!(e.to_string().contains("t10k-images-idx3-ubyte")),
        }
    }

    #[test]
    fn cifar_records_never_panic(
        b in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (1usize..3, any::<u8>()).prop_map(|(n, l)| {
                let mut v = vec![0u8; n * 3073];
                v[0] = l;
                v
            }),
        ],
        header in 0usize..3,
        classes in 0u32..120,
    ) {
        if let Ok(labels) = parse_cifar_labels(&b, header, classes, Path::new("test_batch.bin"), "cifar10") {
            prop_assert!(labels.iter().all(|&l| l < classes));
            prop_assert_eq!(labels.len() * (header + 3072), b.len());
        }
    }

    #[test]
    fn hub_ids_never_panic(s in any::<String>()) {
        let _ = equirun::hub::validate_repo_id(&s);
        if equirun::hub::validate_revision(&s).is_ok() {
            prop_assert!(!s.split('/').any(|p| p == ".." || p.is_empty()));
        }
    }

    #[test]
    fn model_configs_never_panic(s in prop_oneof![
        any::<String>(),
        from_tokens(&["{", "}", "\"text_config\":", "\"vision_config\":", "\"patch_size\":",
            "\"image_size\":", "\"hidden_size\":", "\"num_attention_heads\":", "0", "1", "7",
            "4294967296", "-1", ",", "{}", "null", "\"n_head\":", "\"n_embd\":"], 20),
    ]) {
        let _ = equirun::models::clip::parse_config(&s);
        let _ = equirun::models::clip::open_clip::parse_open_clip_config(&s);
        let _ = equirun::models::lm::gpt2::parse_config(&s);
    }
}

proptest! {
    #![proptest_config(cfg(CASES_HEAVY))]

    #[test]
    fn image_group_specs_never_panic(s in text_or(IMAGE_GROUP_TOKENS, 40)) {
        if let Ok(g) = image_group(&s) {
            prop_assert!(g.order() >= 1 && g.order() <= MAX_GROUP_ORDER);
        }
    }

    #[test]
    fn scan_group_specs_never_panic(s in text_or(SCAN_GROUP_TOKENS, 40)) {
        let input = Vocab::from_tokens(["jump", "run", "left", "right", "up", "down", "walk"]);
        let output = Vocab::from_tokens(["JUMP", "RUN", "TURN_LEFT", "TURN_RIGHT", "TURN_UP", "TURN_DOWN"]);
        if let Ok(g) = scan_group(&s, &input, &output) {
            prop_assert!(g.order() >= 1 && g.order() <= MAX_GROUP_ORDER);
        }
    }

    #[test]
    fn sweep_toml_never_panics(s in text_or(TOML_TOKENS, 16)) {
        let _ = equirun::tools::sweep::SweepConfig::parse(&s, "fuzz");
    }
}

/// Many factors: the order is bounded before anything is enumerated (this returns at once
/// instead of allocating 4^40 elements or overflowing).
#[test]
fn huge_products_are_rejected_up_front() {
    let t = std::time::Instant::now();
    let spec = vec!["rot90"; 8].join("x");
    let e = format!("{:#}", image_group(&spec).unwrap_err());
    assert!(e.contains("65536") && e.contains("1024"), "{e}");
    let spec = vec!["rot90"; 40].join("x");
    let e = format!("{:#}", image_group(&spec).unwrap_err());
    assert!(e.contains("40 factors"), "{e}");
    let input = Vocab::from_tokens(["jump", "run", "left", "right", "up", "down"]);
    let output = Vocab::from_tokens([
        "JUMP",
        "RUN",
        "TURN_LEFT",
        "TURN_RIGHT",
        "TURN_UP",
        "TURN_DOWN",
    ]);
    let spec = vec!["verb"; 11].join(",");
    let e = format!("{:#}", scan_group(&spec, &input, &output).unwrap_err());
    assert!(e.contains("2048") && e.contains("1024"), "{e}");
    assert!(t.elapsed().as_secs() < 5);
}

const NUMBER_TOKENS: &[&str] = &[
    "0",
    "1",
    "2",
    "4",
    "7",
    "9",
    "-",
    "+",
    ".",
    "e",
    "E",
    "inf",
    "nan",
    "NaN",
    ",",
    " ",
    "1e308",
    "1e-320",
    "18446744073709551616",
];

proptest! {
    #![proptest_config(cfg(CASES))]

    /// The command line's range checks (`src/cli/opts.rs`): never panic, and whatever they accept
    /// is in the range they promise.
    #[test]
    fn flag_value_parsers_never_panic(s in text_or(NUMBER_TOKENS, 8)) {
        use equirun::cli::opts::*;
        if let Ok(n) = at_least_one(&s) { prop_assert!(n >= 1); }
        if let Ok(n) = at_least_two(&s) { prop_assert!(n >= 2); }
        if let Ok(x) = probability(&s) { prop_assert!((0.0..=1.0).contains(&x)); }
        if let Ok(x) = open_fraction(&s) { prop_assert!(x > 0.0 && x < 1.0); }
        if let Ok(x) = positive_f32(&s) { prop_assert!(x.is_finite() && x > 0.0); }
        if let Ok(x) = positive_f64(&s) { prop_assert!(x.is_finite() && x > 0.0); }
        if let Ok(x) = non_negative(&s) { prop_assert!(x.is_finite() && x >= 0.0); }
        if let Ok(x) = momentum(&s) { prop_assert!((0.0..1.0).contains(&x)); }
        if let Ok(n) = multiple_of_four(&s) { prop_assert!(n >= 4 && n % 4 == 0); }
        if let Ok(n) = max_pieces(&s) { prop_assert!((3..=512).contains(&n)); }
        if let Ok(k) = views_list(&s) {
            for v in k.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                let v: usize = v.parse().unwrap();
                prop_assert!((1..=6).contains(&v));
            }
        }
    }

    /// `--run-name`: what is accepted is one path segment.
    #[test]
    fn run_names_stay_one_segment(s in text_or(&["a", ".", "..", "/", "\\", "-", "_", "\0", "x"], 8)) {
        if let Ok(n) = equirun::cli::opts::run_name_segment(&s) {
            let p = Path::new("out").join(&n);
            prop_assert_eq!(p.parent(), Some(Path::new("out")));
            prop_assert!(n != "." && n != ".." && !n.contains('/') && !n.contains('\\'));
        }
    }
}
