//! `equirun gpt2-fairness`: equivariant text generation over demographic word-swap groups
//! (docs/fairness.md): vanilla / equitune (full product) / r-equitune (general words from the
//! identity branch) / multi-equitune (Σdᵢ passes) / equizero (experimental, entropy proxy),
//! top-k sampling with RNG streams shared across demographics, and the swap-consistency check.

use super::harness::{self, RunFolder, SeedOutcome};
use super::registry::{self, Experiment};
use crate::cli::opts::{DeviceOpts, ModelOpts, RunOpts};
use crate::equi::proxy::entropy_proxy;
use crate::equi::symmetries::InverseOutput;
use crate::equi::{Evaluator, Method, Symmetry, TokenSymmetry, ZeroSelect};
use crate::groups::fairness::{fairness_group, FairnessGroups, WordLists};
use crate::groups::perm::TokenPerm;
use crate::groups::FiniteGroup;
use crate::models::lm::{CausalLm, Incremental};
use crate::output::{self, progress_bar};
use crate::tools::table::{names, s, seed_of, short_id, Family, Obs};
use anyhow::{anyhow, bail, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

pub const EXPERIMENT: &str = "gpt2-fairness";

/// The default --model.
pub const DEFAULT_LM: &str = "openai-community/gpt2";

/// Sheng et al.'s context templates (docs/fairness.md#prompts-and-swap-consistency).
pub use crate::data::regard::CONTEXTS;

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(mut_arg("model", |a| a.help("A Hugging Face GPT-2 id (openai-community/gpt2, gpt2-medium, …) or `smollm2` for the SmolLM2-135M GGUF installed by scripts/setup_smollm2.sh [default: openai-community/gpt2]")))]
#[command(mut_arg("model_dir", |a| a.help("A local GPT-2 snapshot (config.json, model.safetensors, optional tokenizer.json); overrides --model")))]
pub struct FairnessArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelOpts,
    /// A llama-architecture GGUF file (tokenizer rebuilt from its metadata).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// Demographic axes, any subset in any order: gender, race, orientation.
    #[arg(long = "group", alias = "groups", default_value = "gender")]
    pub groups: String,
    /// Methods: vanilla, equitune, r-equitune, multi-equitune, equizero (experimental).
    #[arg(long, default_value = "vanilla,equitune")]
    pub method: String,
    /// Word lists (TOML); default: the built-in gender / race (3 members) / orientation lists.
    #[arg(long)]
    pub wordlists: Option<PathBuf>,
    /// Bias contexts: respect, occupation.
    #[arg(long, default_value = "respect,occupation")]
    pub contexts: String,
    /// Samples per (demographic, context), spread over the 5 templates.
    #[arg(long, default_value_t = 500, value_parser = crate::cli::opts::at_least_one)]
    pub samples_per_demographic: usize,
    /// Top-k sampling: draw each token among the k most likely.
    #[arg(long, default_value_t = 40, value_parser = crate::cli::opts::at_least_one)]
    pub top_k: usize,
    /// Tokens generated per sample.
    #[arg(long, default_value_t = 15, value_parser = crate::cli::opts::at_least_one)]
    pub max_new_tokens: usize,
    /// After generation, classify every sample with a regard scorer (--scorer) and add the
    /// fairness metrics (fractions with bootstrap CIs, TVD, gap differences) and plots.
    #[arg(long)]
    pub score: bool,
    #[command(flatten)]
    pub scorer: crate::experiments::regard::ScorerOpts,
    /// The prompt: `{demographic}` (the demographic phrase, e.g. "gay Black man") and `{context}`
    /// (one of the context's five templates, e.g. "was known for"), each exactly once.
    #[arg(long, default_value = DEFAULT_PROMPT_TEMPLATE)]
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// `first`: store the first generation step's logits (the --top-k largest with their ids,
    /// the max and the log-sum-exp) with every sample in seed-N.samples.jsonl.gz.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub save_logits: Option<SaveLogits>,
    /// Reproduce the authors' EquiNLG code, not the math: copy g's logits are moved back with g⁻¹
    /// instead of g (identical for 2-member axes; for 3 members the output is NOT equivariant).
    #[arg(long)]
    #[serde(default)]
    pub official_inverse_direction: bool,
    /// Reproduce the authors' committed R-EquiGPT2 mask, not the math: r-equitune takes the
    /// identity copy's logits for the equality words too, not only for the general words.
    #[arg(long)]
    #[serde(default)]
    pub official_relaxed_mask: bool,
    /// Bootstrap resamples for the regard metrics' 95% intervals.
    #[arg(long, default_value_t = 1000, value_parser = crate::cli::opts::at_least_one)]
    pub bootstrap: usize,
    #[command(flatten)]
    pub run: RunOpts,
    /// Device and dtype of the language model (GPT-2 snapshots: f32, f16, bf16 off the CPU;
    /// GGUF: f32). Logits, sampling and the regard scorer stay f32 on the CPU.
    #[command(flatten)]
    #[serde(default)]
    pub compute: DeviceOpts,
}

/// The default --prompt-template.
pub const DEFAULT_PROMPT_TEMPLATE: &str = "The {demographic} {context}";

fn default_prompt_template() -> String {
    DEFAULT_PROMPT_TEMPLATE.into()
}

/// What `--save-logits` stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SaveLogits {
    /// The first generation step's logits summary.
    First,
}

/// Checks a `--prompt-template`: `{demographic}` and `{context}` exactly once each, no other
/// braces.
pub fn check_prompt_template(t: &str) -> Result<()> {
    for key in ["{demographic}", "{context}"] {
        let n = t.matches(key).count();
        if n != 1 {
            bail!("--prompt-template must contain {key} exactly once (found {n} times in {t:?}); e.g. --prompt-template \"The {{demographic}} {{context}}\"");
        }
    }
    let rest = t.replace("{demographic}", "").replace("{context}", "");
    if rest.contains('{') || rest.contains('}') {
        bail!("--prompt-template {t:?} has a brace outside {{demographic}} and {{context}}; only these two placeholders exist");
    }
    Ok(())
}

/// Fills a checked prompt template.
pub fn fill_prompt(template: &str, demographic: &str, context: &str) -> String {
    template
        .replace("{demographic}", demographic)
        .replace("{context}", context)
}

/// Which way copy g's next-token logits are moved back before averaging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    /// `ℓ*(x)[w] = mean_g L(g·x)[g(w)]`: equivariant for any number of members (the default).
    #[default]
    Equivariant,
    /// The authors' code: `mean_g L(g·x)[g⁻¹(w)]` (`--official-inverse-direction`).
    OfficialInverse,
}

/// The methods `gpt2-fairness` generates with (equizero is experimental).
pub const METHODS: &[Method] = &[
    Method::Vanilla,
    Method::Equitune,
    Method::REquitune,
    Method::MultiEquitune,
    Method::Equizero,
];

/// Next-token logits `[B, V]` of a method for prefixes `[B, T]`.
pub fn method_logits(
    m: Method,
    sym: &TokenSymmetry,
    general: &[u32],
    model: &dyn crate::equi::BatchModel,
    x: &Tensor,
) -> Result<Tensor> {
    method_logits_with(m, sym, general, Direction::Equivariant, model, x)
}

/// [`method_logits`] with the direction of the inverse action chosen; `identity_ids` are the
/// tokens r-equitune takes from the identity copy (the general words; with
/// `--official-relaxed-mask` the equality words too).
pub fn method_logits_with(
    m: Method,
    sym: &dyn Symmetry,
    identity_ids: &[u32],
    direction: Direction,
    model: &dyn crate::equi::BatchModel,
    x: &Tensor,
) -> Result<Tensor> {
    let inverse = InverseOutput(sym);
    let sym: &dyn Symmetry = match direction {
        Direction::Equivariant => sym,
        Direction::OfficialInverse => &inverse,
    };
    let general = identity_ids;
    let proxy = entropy_proxy;
    let ev = Evaluator {
        sym,
        proxy: &proxy,
        select: ZeroSelect::WholeCopy,
    };
    match m {
        Method::REquitune => {
            let (outs, _) = ev.run(&[Method::Vanilla, Method::Equitune], model, x)?;
            // general words take the identity branch (docs/fairness.md)
            let v = outs[1].dim(1)?;
            let mut mask = vec![0f32; v];
            for &g in general {
                mask[g as usize] = 1.0;
            }
            let mask = Tensor::from_vec(mask, (1, v), x.device())?;
            let keep = (1.0 - &mask)?;
            Ok((outs[1].broadcast_mul(&keep)? + outs[0].broadcast_mul(&mask)?)?)
        }
        _ => Ok(ev.run(&[m], model, x)?.0.remove(0)),
    }
}

/// Top-k sampling (temperature 1): the k largest logits (ties by lower id), softmax, one draw.
pub fn sample_top_k(logits: &[f32], k: usize, rng: &mut impl Rng) -> u32 {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.clamp(1, logits.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    let max = logits[idx[0] as usize] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| (logits[i as usize] as f64 - max).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, wi) in idx.iter().zip(&w) {
        if u < *wi {
            return *i;
        }
        u -= wi;
    }
    *idx.last().unwrap()
}

/// A demographic: one member index per axis.
pub type Demo = Vec<usize>;

/// The demographic phrase: the members of the non-noun axes by their phrase order (default:
/// orientation, race, others), then the noun axis' member (default: gender) or "person".
pub fn phrase(groups: &FairnessGroups, d: &Demo) -> String {
    let mut words: Vec<(i32, String)> = Vec::new();
    let mut noun = "person".to_string();
    for (a, ax) in groups.axes.iter().enumerate() {
        let m = ax.members[d[a]].clone();
        if ax.is_noun() {
            noun = m;
        } else {
            words.push((ax.phrase_order(), m));
        }
    }
    // stable: equal orders keep the --groups order
    words.sort_by_key(|w| w.0);
    let mut parts: Vec<String> = words.into_iter().map(|w| w.1).collect();
    parts.push(noun);
    parts.join(" ")
}

/// All demographics (Cartesian product of the axes' members, first axis outermost).
pub fn demographics(groups: &FairnessGroups) -> Vec<Demo> {
    let mut out = vec![vec![]];
    for ax in &groups.axes {
        out = out
            .into_iter()
            .flat_map(|d| (0..ax.members.len()).map(move |m| [d.clone(), vec![m]].concat()))
            .collect();
    }
    out
}

/// The group element mapping demographic `a` to `b` (per axis, the cyclic shift).
pub fn element_between(
    group: &FiniteGroup<TokenPerm>,
    groups: &FairnessGroups,
    a: &Demo,
    b: &Demo,
) -> usize {
    let coords: Vec<usize> = groups
        .axes
        .iter()
        .enumerate()
        .map(|(i, ax)| (b[i] + ax.members.len() - a[i]) % ax.members.len())
        .collect();
    (0..group.order())
        .find(|&g| group.coords(g) == coords.as_slice())
        .expect("element exists")
}

/// Loads the LM and its tokenizer.

/// The first generation step's logits of one sample (`--save-logits first`).
#[derive(Clone, Debug, Serialize)]
pub struct FirstLogits {
    /// The `--top-k` largest logits' token ids, largest first (ties by lower id).
    pub top_ids: Vec<u32>,
    pub top_logits: Vec<f32>,
    pub max: f32,
    /// log Σ_w exp(ℓ[w]) over the whole vocabulary (f64 accumulation).
    pub logsumexp: f64,
}

impl FirstLogits {
    pub fn of(logits: &[f32], k: usize) -> FirstLogits {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.sort_by(|a, b| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        });
        idx.truncate(k.clamp(1, logits.len()));
        let max = logits[idx[0] as usize];
        let lse = (max as f64)
            + logits
                .iter()
                .map(|&l| (l as f64 - max as f64).exp())
                .sum::<f64>()
                .ln();
        FirstLogits {
            top_logits: idx.iter().map(|&i| logits[i as usize]).collect(),
            top_ids: idx,
            max,
            logsumexp: lse,
        }
    }
}

/// How a method's logits are computed during generation.
struct GenOpts<'a> {
    identity_ids: &'a [u32],
    direction: Direction,
    first_logits: bool,
}

struct Generated {
    /// ids per (demographic, template, sample)
    ids: Vec<Vec<Vec<Vec<u32>>>>,
    /// `--save-logits first`: per (demographic, template, sample)
    first: Vec<Vec<Vec<FirstLogits>>>,
    tokens: usize,
    token_steps: usize,
    seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn generate_all(
    m: Method,
    lm: &mut dyn CausalLm,
    sym: &TokenSymmetry,
    prompts: &[Vec<Vec<u32>>],
    per_template: usize,
    seed: u64,
    context: &str,
    a: &FairnessArgs,
    stop: &[u32],
    pb: &indicatif::ProgressBar,
    opts: &GenOpts,
) -> Result<Generated> {
    let dev = Device::Cpu;
    let inc = Incremental::new(lm);
    let mut out = Generated {
        ids: Vec::new(),
        first: Vec::new(),
        tokens: 0,
        token_steps: 0,
        seconds: 0.0,
    };
    let t0 = Instant::now();
    for demo_prompts in prompts {
        let mut per_demo = Vec::new();
        let mut first_demo = Vec::new();
        for (ti, p) in demo_prompts.iter().enumerate() {
            // RNG streams shared by all demographics: key (seed, context, template, sample)
            let mut rngs: Vec<_> = (0..per_template)
                .map(|s| output::rng_for(seed, &format!("gen/{context}/{ti}/{s}")))
                .collect();
            let mut seqs: Vec<Vec<u32>> = vec![p.clone(); per_template];
            let mut gen: Vec<Vec<u32>> = vec![Vec::new(); per_template];
            let mut done = vec![false; per_template];
            let mut first = Vec::new();
            for step in 0..a.max_new_tokens {
                let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
                let x = Tensor::from_vec(flat, (per_template, seqs[0].len()), &dev)?;
                let logits =
                    method_logits_with(m, sym, opts.identity_ids, opts.direction, &inc, &x)?
                        .to_vec2::<f32>()?;
                if step == 0 && opts.first_logits {
                    first = logits.iter().map(|l| FirstLogits::of(l, a.top_k)).collect();
                }
                for r in 0..per_template {
                    let tok = if done[r] {
                        stop.first().copied().unwrap_or(0)
                    } else {
                        sample_top_k(&logits[r], a.top_k, &mut rngs[r])
                    };
                    if !done[r] {
                        if stop.contains(&tok) {
                            done[r] = true;
                        } else {
                            gen[r].push(tok);
                            out.tokens += 1;
                        }
                    }
                    seqs[r].push(tok);
                }
                if done.iter().all(|&d| d) {
                    break;
                }
            }
            per_demo.push(gen);
            first_demo.push(first);
            pb.inc(per_template as u64);
        }
        out.ids.push(per_demo);
        out.first.push(first_demo);
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.token_steps = inc.token_steps.get();
    Ok(out)
}

pub fn run(a: &FairnessArgs) -> Result<Vec<PathBuf>> {
    let methods = Method::parse_list_of(&a.method, METHODS, "equirun gpt2-fairness")?;
    let (dev, dtype) = a.compute.inference()?;
    check_prompt_template(&a.prompt_template)?;
    if a.official_relaxed_mask && !methods.contains(&Method::REquitune) {
        bail!("--official-relaxed-mask changes r-equitune only: add r-equitune to --method or drop the switch");
    }
    if a.official_inverse_direction && methods.iter().all(|m| *m == Method::Vanilla) {
        bail!("--official-inverse-direction changes the wrappers only: add equitune, r-equitune, multi-equitune or equizero to --method or drop the switch");
    }
    let seeds = a.run.seed_list()?;
    let contexts: Vec<&(&str, [&str; 5])> = a
        .contexts
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            CONTEXTS
                .iter()
                .find(|(n, _)| *n == c)
                .ok_or_else(|| anyhow!("unknown context '{c}': use respect and/or occupation"))
        })
        .collect::<Result<_>>()?;
    if a.samples_per_demographic == 0 || a.samples_per_demographic % 5 != 0 {
        bail!("--samples-per-demographic must be a positive multiple of 5 (the 5 templates of a context)");
    }
    let per_template = a.samples_per_demographic / 5;
    let lists = match &a.wordlists {
        Some(p) => WordLists::from_file(p)?,
        None => WordLists::default_lists(),
    };
    let axes: Vec<String> = a
        .groups
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    // validate the axis names before loading a model
    for ax in &axes {
        if !lists.axes.contains_key(ax) {
            bail!(
                "unknown demographic axis '{ax}': the word lists define {}",
                lists.axes.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let (mut lm, tok, model_desc) = crate::models::lm::loader::load_lm(
        &a.model.source(DEFAULT_LM),
        a.gguf.as_deref(),
        &dev,
        dtype,
    )?;
    let vocab = lm.vocab_size();
    let (group, fg) = fairness_group(&axes, &lists, &tok, vocab)?;
    let maps = fg.collapse_maps(vocab);
    let ginfo = group.info();
    let sym = TokenSymmetry::new(group.clone(), false, None).with_collapse(maps);
    let stop: Vec<u32> = ["\n", "<|endoftext|>", "<|im_end|>"]
        .iter()
        .filter_map(|s| {
            tok.token_to_id(s).or_else(|| {
                tok.encode(*s, false)
                    .ok()
                    .filter(|e| e.get_ids().len() == 1)
                    .map(|e| e.get_ids()[0])
            })
        })
        .collect();
    let demos = demographics(&fg);
    // prompts per context: [demo][template] token ids; check they transform exactly by g
    let mut ctx_prompts = Vec::new();
    for (cname, templates) in &contexts {
        let mut per_demo = Vec::new();
        for d in &demos {
            let mut row = Vec::new();
            for t in templates.iter() {
                let text = fill_prompt(&a.prompt_template, &phrase(&fg, d), t);
                let ids = tok
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?
                    .get_ids()
                    .to_vec();
                row.push(ids);
            }
            per_demo.push(row);
        }
        for (i, d) in demos.iter().enumerate() {
            let g = element_between(&group, &fg, &demos[0], d);
            for t in 0..templates.len() {
                let mapped: Vec<u32> = per_demo[0][t]
                    .iter()
                    .map(|&x| group.element(g).input[x as usize])
                    .collect();
                if mapped != per_demo[i][t] {
                    bail!("the prompts for {:?} and {:?} ({cname}) do not tokenize as word swaps of each other; the demographic words must be single tokens in context", phrase(&fg, &demos[0]), phrase(&fg, d));
                }
            }
        }
        ctx_prompts.push(per_demo);
    }
    let mut config = json!({
        "model": model_desc, "groups": ginfo, "axes": fg.axes, "general_words": fg.general_words,
        "methods": methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "contexts": contexts.iter().map(|c| c.0).collect::<Vec<_>>(),
        "demographics": demos.iter().map(|d| phrase(&fg, d)).collect::<Vec<_>>(),
        "samples_per_demographic": a.samples_per_demographic, "top_k": a.top_k, "temperature": 1.0,
        "max_new_tokens": a.max_new_tokens, "stop_tokens": stop,
        "averaging": "logits (exact inverse permutations)", "multi_canonicaliser": "first word of each equality set",
        "equizero_proxy": "entropy of the next-token distribution (experimental)",
        "rng": "ChaCha per (seed, context, template, sample), shared across demographics",
    });
    crate::device::record_in_config(&mut config, &dev, dtype);
    if a.prompt_template != DEFAULT_PROMPT_TEMPLATE {
        config["prompt_template"] = json!(a.prompt_template);
    }
    let mut quirks = Vec::new();
    if a.official_inverse_direction {
        quirks.push("inverse-direction: copy g's logits moved back with g^-1 (authors' code; not equivariant for 3+ members)");
    }
    if a.official_relaxed_mask {
        quirks.push("relaxed-mask: r-equitune takes the identity copy for equality and general words (authors' committed code)");
    }
    if !quirks.is_empty() {
        config["official_quirks"] = json!(quirks);
    }
    let direction = if a.official_inverse_direction {
        Direction::OfficialInverse
    } else {
        Direction::Equivariant
    };
    let mut identity_ids = fg.general_ids.clone();
    if a.official_relaxed_mask {
        identity_ids.extend(
            fg.axes
                .iter()
                .flat_map(|ax| ax.ids.iter().flatten().copied()),
        );
    }
    let gen_opts = GenOpts {
        identity_ids: &identity_ids,
        direction,
        first_logits: a.save_logits == Some(SaveLogits::First),
    };
    if a.score {
        config["regard"] = json!({"scorer": a.scorer, "bootstrap": a.bootstrap, "mask_demographic": !a.scorer.no_mask});
    }
    let mut scorer: Option<Box<dyn crate::experiments::regard::RegardScorer>> = None;
    let lists = match &a.wordlists {
        Some(p) => WordLists::from_file(p)?,
        None => WordLists::default_lists(),
    };
    let axes_name = axes.join("-");
    let folder = RunFolder::new(
        &a.run,
        EXPERIMENT,
        harness::run_name(a.run.run_name.as_ref(), &[&axes_name], &config),
        &config,
    );
    folder.run_seeds(&seeds, |seed, path| {
        let total =
            (methods.len() * contexts.len() * demos.len() * a.samples_per_demographic) as u64;
        let pb = progress_bar(total, &format!("seed {seed}"));
        let mut metrics = serde_json::Map::new();
        let mut cost = serde_json::Map::new();
        let mut tsv = String::from("method\tcontext\tdemographic\ttemplate\tseed\tsample\ttext\n");
        let mut samples: Vec<crate::data::regard::Sample> = Vec::new();
        let mut id_rows: Vec<Value> = Vec::new();
        for &m in &methods {
            let mut consistent = 0usize;
            let mut pairs = 0usize;
            let (mut toks, mut steps, mut secs) = (0usize, 0usize, 0f64);
            for (ci, (cname, templates)) in contexts.iter().enumerate() {
                let g = generate_all(
                    m,
                    lm.as_mut(),
                    &sym,
                    &ctx_prompts[ci],
                    per_template,
                    seed,
                    cname,
                    a,
                    &stop,
                    &pb,
                    &gen_opts,
                )?;
                toks += g.tokens;
                steps += g.token_steps;
                secs += g.seconds;
                for (di, d) in demos.iter().enumerate() {
                    for (ti, t) in templates.iter().enumerate() {
                        for s in 0..per_template {
                            let mut ids = ctx_prompts[ci][di][ti].clone();
                            ids.extend(&g.ids[di][ti][s]);
                            let text = tok
                                .decode(&ids, false)
                                .map_err(|e| anyhow!("decoding: {e}"))?;
                            let text = text.lines().next().unwrap_or("").replace('\t', " ");
                            let mut row = json!({
                                "method": m.name(), "context": cname, "demographic": phrase(&fg, d),
                                "template": t, "sample": s, "text": text,
                                "prompt_ids": ctx_prompts[ci][di][ti],
                                "continuation_ids": g.ids[di][ti][s],
                            });
                            if gen_opts.first_logits {
                                row["first_logits"] = json!(g.first[di][ti][s]);
                            }
                            id_rows.push(row);
                            samples.push(crate::data::regard::Sample {
                                model: m.name().into(),
                                context: cname.to_string(),
                                demographic: phrase(&fg, d),
                                text: text.clone(),
                            });
                            tsv += &format!(
                                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                                m.name(),
                                cname,
                                phrase(&fg, d),
                                t,
                                seed,
                                s,
                                text
                            );
                        }
                    }
                    // swap consistency: the sample for g·d is g applied to the sample for d
                    for (dj, d2) in demos.iter().enumerate() {
                        if dj == di {
                            continue;
                        }
                        let el = group.element(element_between(&group, &fg, d, d2));
                        for ti in 0..templates.len() {
                            for s in 0..per_template {
                                pairs += 1;
                                let mapped: Vec<u32> = g.ids[di][ti][s]
                                    .iter()
                                    .map(|&x| el.input[x as usize])
                                    .collect();
                                consistent += (mapped == g.ids[dj][ti][s]) as usize;
                            }
                        }
                    }
                }
            }
            metrics.insert(m.name().into(), json!({
                "swap_consistency": if pairs > 0 { consistent as f64 / pairs as f64 } else { 1.0 },
                "consistent_pairs": consistent, "pairs": pairs,
                "samples": contexts.len() * demos.len() * a.samples_per_demographic, "generated_tokens": toks,
            }));
            cost.insert(
                m.name().into(),
                json!({
                    "forward_passes_per_token": m.passes(&sym), "seconds": secs,
                    "sampled_tokens_per_second": toks as f64 / secs.max(1e-9),
                    "model_token_positions_per_second": steps as f64 / secs.max(1e-9),
                }),
            );
        }
        pb.finish_and_clear();
        let samples_path = path.with_extension("samples.tsv");
        output::write_bytes_atomic(&samples_path, tsv.as_bytes())?;
        let header = json!({
            "schema": super::predictions::SAMPLES_SCHEMA, "version": super::predictions::VERSION,
            "experiment": EXPERIMENT, "seed": seed, "tokenizer_decode": "skip_special_tokens = false",
        });
        super::predictions::write_jsonl_gz(
            &super::predictions::samples_path(path),
            &header,
            &id_rows,
        )?;
        let mut regard = Value::Null;
        if a.score {
            use crate::experiments::{regard, regard_report};
            if scorer.is_none() {
                scorer = Some(regard::load_scorer(&a.scorer, None)?);
            }
            let sc = scorer.as_deref().ok_or_else(|| anyhow!("no scorer"))?;
            let (scored, secs) = regard::score_samples(sc, &samples, &a.scorer)?;
            let mut rng = output::rng_for(seed, "regard-bootstrap");
            let m = regard_report::metrics(&scored, &lists, a.bootstrap, &mut rng)?;
            let dir = path.parent().ok_or_else(|| anyhow!("bad result path"))?;
            let stem = format!("seed-{seed}");
            output::write_bytes_atomic(
                &dir.join(format!("{stem}.labels.tsv")),
                regard::labels_tsv(&samples, &scored).as_bytes(),
            )?;
            let plots = regard_report::plot(&m, dir, &format!("{stem}."), "")?;
            eprint!("{}", regard_report::markdown(&m));
            regard = json!({
                "metrics": m, "scorer": sc.describe(), "classify_seconds": secs,
                "labels_file": format!("{stem}.labels.tsv"),
                "plots": plots.iter().filter_map(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>(),
            });
        }
        for (k, v) in &metrics {
            eprintln!(
                "seed {seed} {k}: swap consistency {:.3} ({} / {} pairs)",
                v["swap_consistency"].as_f64().unwrap_or(0.0),
                v["consistent_pairs"],
                v["pairs"]
            );
        }
        Ok(SeedOutcome {
            metrics: json!({"methods": metrics, "samples_file": samples_path.file_name().unwrap().to_string_lossy(), "regard": regard}),
            cost: json!({"methods": cost, "peak_rss_mib": output::peak_rss_mib(),
                         "inference": crate::device::inference_json(&dev, dtype)}),
            summary: format!("seed {seed}: samples {}", samples_path.display()),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// what `equirun report` tabulates

pub fn extract_fairness(rec: &Value, source: &str) -> Vec<Obs> {
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

pub const ENTRY: Experiment = Experiment {
    name: EXPERIMENT,
    words: &["gpt2-fairness"],
    command: Some(registry::Command {
        name: "gpt2-fairness",
        about:
            "Equivariant text generation over demographic word swaps (GPT-2, GGUF LMs), with the \
                swap-consistency check",
        args: <FairnessArgs as clap::Args>::augment_args,
        run: |m| registry::run_with(m, run),
    }),
    run_folders: registry::one_folder,
    extract: Some(|rec, source| {
        let mut o = extract_fairness(rec, source);
        o.extend(super::regard_report::extract_regard(
            rec,
            &rec["metrics"]["regard"]["metrics"],
            source,
        ));
        o
    }),
};
