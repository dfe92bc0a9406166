//! Parity of candle CLIP (as loaded by equirun) with PyTorch/transformers on a tiny random
//! checkpoint; fixture written by scripts/gen_clip_fixture.py.

use candle_core::{DType, Device};
use equirun::hub::ModelSource;
use equirun::models::clip::{Clip, REQUIRED_FILES};
use equirun::testing::max_abs_diff as max_abs;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny")
}

#[test]
fn clip_matches_transformers() -> anyhow::Result<()> {
    let dir = fixture();
    // the fixture has no tokenizer.json: resolve config + weights only
    let src = ModelSource {
        model: String::new(),
        revision: "main".into(),
        model_dir: Some(dir.clone()),
    };
    let files = src.resolve(&REQUIRED_FILES[..2], &[])?;
    let dev = Device::Cpu;
    let clip = Clip::load(&files, &dev)?;
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev)?;
    let pixels = &r["pixel_values"];
    let ids = r["input_ids"].to_dtype(DType::U32)?;

    let img = clip.encode_images(pixels)?;
    let txt = clip.encode_token_ids(&ids)?;
    let (_, logits_per_image) = clip.model.forward(pixels, &ids)?;
    let d_img = max_abs(&img, &r["image_embeds"]);
    let d_txt = max_abs(&txt, &r["text_embeds"]);
    let d_log = max_abs(&logits_per_image, &r["logits_per_image"]);
    println!("parity max-abs-diff: image_embeds {d_img:.3e}, text_embeds {d_txt:.3e}, logits_per_image {d_log:.3e}");
    assert!(d_img <= 1e-4, "image embeddings differ by {d_img}");
    assert!(d_txt <= 1e-4, "text embeddings differ by {d_txt}");
    assert!(d_log <= 1e-4, "logits differ by {d_log}");
    // the embeddings are not trivially small (the check would be vacuous)
    let scale = equirun::testing::max_abs(&r["image_embeds"]);
    assert!(
        scale > 0.1,
        "reference embeddings suspiciously small: {scale}"
    );
    // the learned logit scale is read from the checkpoint
    assert!((clip.model_logit_scale - 2.6592f32.exp()).abs() < 1e-3);
    Ok(())
}
