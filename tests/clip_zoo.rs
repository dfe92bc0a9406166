//! The CLIP zoo: parity of every backbone family with its reference implementation on committed
//! tiny fixtures (HF ViT-B/16-style via transformers; OpenAI ModifiedResNet and OpenCLIP ViT via
//! open_clip), config.json parsing for the large ViTs, half precision against f32, exact
//! invariance of every wrapper on the ResNet backbone, and `equirun clip` / `check` end to end on
//! a ResNet CLIP resolved through the `RN50` alias from an offline HF cache.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use equirun::equi::{
    neg_max_confidence, Evaluator, ImageOutput, ImageSymmetry, Method, Symmetry, ZeroSelect,
};
use equirun::groups::image::image_group;
use equirun::hub::{install_into_cache, ModelSource};
use equirun::models::clip::open_clip::{parse_open_clip_config, OPEN_CLIP_FILES};
use equirun::models::clip::{
    parse_config, tiny_resnet_clip, zero_shot_probs, Clip, REQUIRED_FILES,
};
use equirun::testing::{max_abs, max_abs_diff, randn};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Loads a fixture (no tokenizer.json) in `dtype`.
fn load(name: &str, dtype: DType) -> Clip {
    let dir = fixture(name);
    let open_clip = dir.join("open_clip_config.json").is_file();
    let files = if open_clip {
        &OPEN_CLIP_FILES[..2]
    } else {
        &REQUIRED_FILES[..2]
    };
    let src = ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir),
    };
    let files = src.resolve(files, &[]).unwrap();
    Clip::load_with(&files, &Device::Cpu, dtype).unwrap()
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

/// Image/text feature and logit parity of one fixture; returns (image, text) max-abs diffs.
fn parity(name: &str) -> (f32, f32) {
    let clip = load(name, DType::F32);
    let r = reference(name);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let img = clip.encode_images(&r["pixel_values"]).unwrap();
    let txt = clip.encode_token_ids(&ids).unwrap();
    let (_, logits) = clip.model.forward(&r["pixel_values"], &ids).unwrap();
    let (di, dt) = (
        max_abs_diff(&img, &r["image_embeds"]),
        max_abs_diff(&txt, &r["text_embeds"]),
    );
    let dl = max_abs_diff(&logits, &r["logits_per_image"]);
    println!("{name}: parity max-abs-diff image {di:.3e}, text {dt:.3e}, logits {dl:.3e}");
    assert!(di <= 1e-4, "{name}: image features differ by {di}");
    assert!(dt <= 1e-4, "{name}: text features differ by {dt}");
    assert!(dl <= 1e-4, "{name}: logits differ by {dl}");
    // the comparison is not vacuous
    assert!(max_abs(&r["image_embeds"]) > 0.1 && max_abs(&r["text_embeds"]) > 0.1);
    (di, dt)
}

#[test]
fn vit_b16_style_hf_checkpoint_matches_transformers() {
    parity("clip-b16-tiny");
    let clip = load("clip-b16-tiny", DType::F32);
    assert_eq!(clip.spec.family, "ViT");
    assert_eq!(clip.spec.layout, "hf");
    assert_eq!(clip.image_size(), 64);
    assert_eq!(clip.projection_dim(), 24);
    assert_eq!(clip.spec.context_length, 16);
    assert!((clip.model_logit_scale - 2.6592f32.exp()).abs() < 1e-3);
}

#[test]
fn resnet_clip_matches_open_clip() {
    parity("clip-rn-tiny");
    let clip = load("clip-rn-tiny", DType::F32);
    assert_eq!(clip.spec.family, "ModifiedResNet");
    assert_eq!(clip.spec.layout, "open_clip");
    assert_eq!(clip.image_size(), 64);
    assert_eq!(clip.projection_dim(), 24);
    assert!((clip.model_logit_scale - 1.0 / 0.07).abs() < 1e-2);

    // the same weights with exact GELU in the text tower (OpenCLIP-trained RN checkpoints)
    let dir = fixture("clip-rn-tiny");
    let text = std::fs::read_to_string(dir.join("open_clip_config.json")).unwrap();
    let mut config = parse_open_clip_config(&text).unwrap();
    assert!(config.quick_gelu);
    config.quick_gelu = false;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("open_clip_model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let gelu = Clip::from_open_clip(vb, &config, None, DType::F32).unwrap();
    let r = reference("clip-rn-tiny");
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let d = max_abs_diff(
        &gelu.encode_token_ids(&ids).unwrap(),
        &r["text_embeds_gelu"],
    );
    println!("clip-rn-tiny: text (exact GELU) max-abs-diff {d:.3e}");
    assert!(d <= 1e-4, "GELU text features differ by {d}");
}

#[test]
fn openclip_vit_matches_open_clip() {
    parity("openclip-vit-tiny");
    let clip = load("openclip-vit-tiny", DType::F32);
    assert_eq!(clip.spec.family, "ViT");
    assert_eq!(clip.spec.layout, "open_clip");
}

/// f16 inference against f32 on the tiny models (CPU; bf16 has no CPU matmul in candle, so it
/// is a GPU-only option and refused on the CPU). Stated tolerance, relative to the largest f32
/// feature: ≤ 1e-2 (measured ≈1.5e-3), and cosine similarity of every feature vector ≥ 0.999.
#[test]
fn half_precision_agrees_with_f32() {
    for name in ["clip-b16-tiny", "clip-rn-tiny"] {
        let r = reference(name);
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let f32m = load(name, DType::F32);
        let ref_img = f32m.encode_images(&r["pixel_values"]).unwrap();
        let ref_txt = f32m.encode_token_ids(&ids).unwrap();
        for (dtype, tol, min_cos) in [(DType::F16, 1e-2f32, 0.999f32)] {
            let m = load(name, dtype);
            assert_eq!(m.dtype, dtype);
            for (what, got, want) in [
                (
                    "image",
                    m.encode_images(&r["pixel_values"]).unwrap(),
                    &ref_img,
                ),
                ("text", m.encode_token_ids(&ids).unwrap(), &ref_txt),
            ] {
                assert_eq!(got.dtype(), DType::F32, "features come back in f32");
                let rel = max_abs_diff(&got, want) / max_abs(want);
                let cos = (equirun::models::l2_normalize(&got).unwrap()
                    * equirun::models::l2_normalize(want).unwrap())
                .unwrap()
                .sum(1)
                .unwrap()
                .min(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
                println!("{name} {dtype:?} {what}: max rel diff {rel:.3e}, min cosine {cos:.6}");
                assert!(
                    rel <= tol,
                    "{name} {dtype:?} {what}: relative diff {rel} > {tol}"
                );
                assert!(cos >= min_cos, "{name} {dtype:?} {what}: cosine {cos}");
                assert!(
                    rel > 0.0,
                    "{name} {dtype:?}: identical to f32, the dtype was not applied"
                );
            }
        }
    }
}

#[test]
fn large_vit_configs_parse_from_config_json() {
    // a sparse ViT-L/14 config (as saved by recent transformers): absent keys take HF defaults
    let l14 = r#"{"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
        "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                        "projection_dim": 768, "eos_token_id": 2},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                          "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}}"#;
    let (c, eos) = parse_config(l14).unwrap();
    assert_eq!(c.vision_config.embed_dim, 1024);
    assert_eq!(c.vision_config.num_hidden_layers, 24);
    assert_eq!(c.vision_config.num_attention_heads, 16);
    assert_eq!(c.vision_config.patch_size, 14);
    assert_eq!(c.vision_config.projection_dim, 768);
    assert_eq!(c.image_size, 224);
    assert_eq!(c.text_config.embed_dim, 768);
    assert_eq!(c.text_config.num_hidden_layers, 12);
    assert_eq!(c.text_config.vocab_size, 49408);
    assert_eq!(c.text_config.max_position_embeddings, 77);
    assert_eq!(eos, Some(2));
    // ViT-L/14-336 through the old `*_config_dict` overrides
    let l336 = r#"{"model_type": "clip", "projection_dim": 768,
        "text_config": {"hidden_size": 512}, "text_config_dict": {"hidden_size": 768, "num_attention_heads": 12},
        "vision_config": {}, "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "image_size": 336}}"#;
    let (c, _) = parse_config(l336).unwrap();
    assert_eq!(c.text_config.embed_dim, 768);
    assert_eq!(c.image_size, 336);
    assert_eq!(c.vision_config.image_size, 336);
    // B/16
    let b16 = r#"{"model_type": "clip", "vision_config": {"patch_size": 16}}"#;
    let (c, _) = parse_config(b16).unwrap();
    assert_eq!(
        (c.vision_config.patch_size, c.vision_config.embed_dim),
        (16, 768)
    );
    // unsupported activations are named
    let gelu = r#"{"model_type": "clip", "vision_config": {"hidden_act": "gelu"}}"#;
    let e = format!("{:#}", parse_config(gelu).unwrap_err());
    assert!(e.contains("hidden_act 'gelu'"), "{e}");
}

/// Max over g of |F(g·x) − F(x)| for each method (invariant outputs).
fn invariance_errors(
    model: &dyn equirun::equi::BatchModel,
    x: &Tensor,
    sym: &ImageSymmetry,
    select: ZeroSelect,
) -> Vec<f32> {
    let proxy = neg_max_confidence;
    let ev = Evaluator {
        sym,
        proxy: &proxy,
        select,
    };
    let (base, _) = ev.run(&Method::EVALUATOR, model, x).unwrap();
    let mut errs = vec![0f32; Method::EVALUATOR.len()];
    for g in 0..sym.order() {
        let (outs, _) = ev
            .run(&Method::EVALUATOR, model, &sym.act_input(g, x).unwrap())
            .unwrap();
        for (i, (o, b)) in outs.iter().zip(&base).enumerate() {
            errs[i] = errs[i].max(max_abs_diff(o, &sym.act_output(g, b).unwrap()));
        }
    }
    errs
}

#[test]
fn resnet_backbone_wrappers_are_invariant_for_every_element() {
    let clip = tiny_resnet_clip(7, &Device::Cpu).unwrap();
    let w = equirun::models::l2_normalize(&randn(1, &[10, 24])).unwrap();
    let model = |x: &Tensor| -> anyhow::Result<Tensor> {
        zero_shot_probs(&clip.encode_images(x)?, &w, 20.0)
    };
    let x = randn(2, &[3, 3, 64, 64]);
    for spec in ["rot90", "flip", "rot90xflip"] {
        let sym = ImageSymmetry::new(image_group(spec).unwrap(), ImageOutput::Invariant, 11);
        for select in [ZeroSelect::WholeCopy, ZeroSelect::Elementwise] {
            let errs = invariance_errors(&model, &x, &sym, select);
            for (m, e) in Method::EVALUATOR.iter().zip(&errs) {
                if *m == Method::Vanilla {
                    assert!(
                        *e > 1e-3,
                        "{spec}: vanilla ResNet CLIP should not be invariant: {e}"
                    );
                } else {
                    assert!(*e <= 1e-5, "{spec} {select:?}: {} error {e}", m.name());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// end to end through the binary

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

struct Env {
    root: tempfile::TempDir,
}

impl Env {
    /// A tiny ModifiedResNet snapshot installed in an HF cache as the repo `RN50` resolves to.
    fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snapshot");
        let words = equirun::testing::cifar10_prompt_words();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        equirun::models::clip::open_clip::write_tiny_resnet_snapshot(&snap, 3, &refs).unwrap();
        let files: Vec<(&str, PathBuf)> =
            OPEN_CLIP_FILES.iter().map(|f| (*f, snap.join(f))).collect();
        let files: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let repo = equirun::models::clip::zoo::lookup("RN50").unwrap().repo;
        install_into_cache(&root.path().join("hf/hub"), repo, "main", COMMIT, &files).unwrap();
        equirun::testing::write_tiny_cifar10(&root.path().join("data"), 6, 5);
        Env { root }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.path().join(s)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_equirun"))
            .args(args)
            .env("HF_HOME", self.p("hf"))
            .env_remove("HF_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .env("EQUIRUN_CACHE", self.p("cache"))
            .env("EQUIRUN_NO_PROGRESS", "1")
            .output()
            .unwrap()
    }
    fn clip(&self, extra: &[&str]) -> Output {
        self.clip_to("results", "RN50", extra)
    }
    fn clip_to(&self, out: &str, model: &str, extra: &[&str]) -> Output {
        let (data, out) = (self.p("data"), self.p(out));
        let mut args = vec![
            "clip",
            "--model",
            model,
            "--dataset",
            "cifar10",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--group",
            "rot90xflip",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn result_json(dir: &Path) -> Value {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir.join("clip")).unwrap() {
        let p = e.unwrap().path().join("seed-0.json");
        if p.is_file() {
            found.push(p);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    serde_json::from_str(&std::fs::read_to_string(&found[0]).unwrap()).unwrap()
}

#[test]
fn clip_cli_runs_the_rn50_alias_from_an_offline_cache() {
    let env = Env::new();
    let o = env.clip(&[
        "--method",
        "vanilla,equitune,multi-equitune",
        "--transform",
        "none",
    ]);
    ok(&o);
    let j = result_json(&env.p("results"));
    let c = &j["config"];
    assert_eq!(c["model_alias"], "RN50");
    assert_eq!(c["model"]["id"], "timm/resnet50_clip.openai");
    assert_eq!(c["model"]["commit"], COMMIT);
    assert_eq!(c["backbone"]["family"], "ModifiedResNet");
    assert_eq!(c["backbone"]["layout"], "open_clip");
    assert_eq!(c["image_size"], 64);
    assert_eq!(c["inference"]["device"], "cpu");
    assert_eq!(c["inference"]["dtype"], "f32");
    assert_eq!(j["cost"]["forward_passes_per_input"]["equitune"], 8);
    assert_eq!(j["cost"]["forward_passes_per_input"]["multi-equitune"], 6);
    for m in ["vanilla", "equitune", "multi-equitune"] {
        assert_eq!(j["metrics"][m]["n"], 6);
    }
    // the invariant methods score the same under a rot90xflip corruption of every image
    let o = env.clip_to(
        "results-t",
        "RN50",
        &["--method", "vanilla,equitune,multi-equitune"],
    );
    ok(&o);
    let t = result_json(&env.p("results-t"));
    for m in ["equitune", "multi-equitune"] {
        assert_eq!(t["metrics"][m], j["metrics"][m], "{m}");
    }
    // f16 inference runs and is recorded
    let o = env.clip_to(
        "results-f16",
        "ViT-B-32",
        &["--method", "vanilla", "--dtype", "f16", "--model", "RN50"],
    );
    assert!(!o.status.success(), "--model twice is a usage error");
    let o = env.clip_to(
        "results-f16",
        "RN50",
        &["--method", "vanilla", "--dtype", "f16"],
    );
    ok(&o);
    let b = result_json(&env.p("results-f16"));
    assert_eq!(b["config"]["inference"]["dtype"], "f16");
    assert_eq!(b["metrics"]["vanilla"]["n"], 6);
}

#[test]
fn list_models_and_device_errors() {
    let env = Env::new();
    let o = env.run(&["clip", "--list-models"]);
    ok(&o);
    let s = String::from_utf8_lossy(&o.stdout);
    for (name, repo) in [
        ("RN50", "timm/resnet50_clip.openai"),
        ("RN101", "timm/resnet101_clip.openai"),
        ("ViT-B/32", "openai/clip-vit-base-patch32"),
        ("ViT-B/16", "openai/clip-vit-base-patch16"),
        ("ViT-L/14", "openai/clip-vit-large-patch14"),
    ] {
        assert!(
            s.lines().any(|l| l.starts_with(name) && l.contains(repo)),
            "{name}: {s}"
        );
    }
    let fails = |o: &Output, needles: &[&str]| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in {err}");
        }
        assert!(!env.p("results").exists(), "no result file on error");
    };
    if !cfg!(feature = "cuda") {
        fails(
            &env.clip(&["--device", "cuda:0"]),
            &["cuda", "--features cuda", "--device cpu"],
        );
    }
    fails(
        &env.clip(&["--dtype", "f8"]),
        &["--dtype", "f32, f16 or bf16"],
    );
    fails(
        &env.clip(&["--device", "tpu"]),
        &["--device", "unknown device 'tpu'"],
    );
    // an alias whose snapshot is not cached: the error names the repo and the way out
    fails(
        &env.clip_to("results", "RN101", &[]),
        &[
            "timm/resnet101_clip.openai",
            "HF_HUB_OFFLINE",
            "--model-dir",
        ],
    );
    fails(
        &env.clip(&["--dtype", "bf16"]),
        &["bf16 is not supported on the CPU"],
    );
}

#[test]
fn check_command_on_the_resnet_backbone() {
    let env = Env::new();
    let o = env.run(&["check", "--backbone", "resnet", "--json", "--batch", "2"]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["model"].as_str().unwrap().contains("ModifiedResNet"));
    assert_eq!(v["elements"], 8);
    for (m, passes) in [
        ("vanilla", 1),
        ("equitune", 8),
        ("equizero", 8),
        ("multi-equitune", 6),
        ("multi-equizero", 6),
    ] {
        assert_eq!(v["methods"][m]["forward_passes"], passes);
        let e = v["methods"][m]["max_error"].as_f64().unwrap();
        if m == "vanilla" {
            assert!(e > 1e-4, "vanilla error {e}");
        } else {
            assert!(e <= 1e-5, "{m} error {e}");
        }
    }
    // and on the RN50 snapshot through --model-dir
    let o = env.run(&[
        "check",
        "--model-dir",
        env.p("snapshot").to_str().unwrap(),
        "--json",
        "--batch",
        "2",
    ]);
    ok(&o);
    // precision parity: the snapshot in f16 against itself in f32 (what scripts/gpu_check.sh
    // measures for a GPU): close, but not equal
    let o = env.run(&[
        "check",
        "--model-dir",
        env.p("snapshot").to_str().unwrap(),
        "--group",
        "rot90",
        "--method",
        "vanilla,equitune",
        "--dtype",
        "f16",
        "--compare-cpu",
        "--json",
        "--batch",
        "2",
    ]);
    ok(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parity"]["dtype"], "f16");
    let fd = v["parity"]["max_abs_feature_diff"].as_f64().unwrap();
    let pd = v["parity"]["max_abs_prob_diff"].as_f64().unwrap();
    assert!(fd > 0.0 && fd < 5e-2, "f16 vs f32 feature difference {fd}");
    assert!(pd < 5e-2, "f16 vs f32 probability difference {pd}");
}

/// The zero-shot classifier built with its classes running concurrently (fused CPU kernels,
/// one class per thread) is bit-identical to each class built on its own.
#[test]
fn concurrent_zero_shot_classifier_is_bit_identical_to_one_class_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    equirun::testing::write_tiny_clip_for_cifar10(dir.path(), 7);
    let src = ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir.path().to_path_buf()),
    };
    let files = src.resolve(REQUIRED_FILES, &[]).unwrap();
    let clip = Clip::load_with(&files, &Device::Cpu, DType::F32).unwrap();
    assert!(
        clip.fast.is_some(),
        "the tiny CLIP should run on the fused kernels"
    );
    let classes = equirun::data::prompts::cifar10_classes();
    let templates = equirun::data::prompts::cifar_templates();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let all = clip
        .zero_shot_classifier(&classes, &templates, &|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
    assert_eq!(calls.into_inner(), classes.len());
    let all = all.to_vec2::<f32>().unwrap();
    for (c, row) in classes.iter().zip(&all) {
        let one = clip
            .zero_shot_classifier(std::slice::from_ref(c), &templates, &|_| {})
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one[0]), bits(row), "class {c}");
    }
}
