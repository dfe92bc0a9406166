//! CLIP model names the papers use (`RN50`, `RN101`, `ViT-B/32`, `ViT-B/16`, ...) and the hub
//! repository each resolves to. `equirun clip --list-models` prints this table.

/// One named CLIP checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZooEntry {
    /// The name the papers / OpenAI use.
    pub name: &'static str,
    /// Hugging Face hub repository.
    pub repo: &'static str,
    /// Vision tower: `ViT` or `ModifiedResNet`.
    pub family: &'static str,
    /// Snapshot layout: `hf` (config.json + model.safetensors, transformers `CLIPModel`) or
    /// `open_clip` (open_clip_config.json + open_clip_model.safetensors, OpenAI/OpenCLIP names).
    pub layout: &'static str,
    /// Joint embedding dimension.
    pub embed_dim: usize,
    /// Input resolution.
    pub image_size: usize,
    /// Used in the papers' CLIP tables (docs/experiments.md, "clip").
    pub in_papers: bool,
}

/// The zoo, papers' backbones first.
pub const ZOO: &[ZooEntry] = &[
    ZooEntry {
        name: "RN50",
        repo: "timm/resnet50_clip.openai",
        family: "ModifiedResNet",
        layout: "open_clip",
        embed_dim: 1024,
        image_size: 224,
        in_papers: true,
    },
    ZooEntry {
        name: "RN101",
        repo: "timm/resnet101_clip.openai",
        family: "ModifiedResNet",
        layout: "open_clip",
        embed_dim: 512,
        image_size: 224,
        in_papers: true,
    },
    ZooEntry {
        name: "ViT-B/32",
        repo: "openai/clip-vit-base-patch32",
        family: "ViT",
        layout: "hf",
        embed_dim: 512,
        image_size: 224,
        in_papers: true,
    },
    ZooEntry {
        name: "ViT-B/16",
        repo: "openai/clip-vit-base-patch16",
        family: "ViT",
        layout: "hf",
        embed_dim: 512,
        image_size: 224,
        in_papers: true,
    },
    ZooEntry {
        name: "RN50x4",
        repo: "timm/resnet50x4_clip.openai",
        family: "ModifiedResNet",
        layout: "open_clip",
        embed_dim: 640,
        image_size: 288,
        in_papers: false,
    },
    ZooEntry {
        name: "RN50x16",
        repo: "timm/resnet50x16_clip.openai",
        family: "ModifiedResNet",
        layout: "open_clip",
        embed_dim: 768,
        image_size: 384,
        in_papers: false,
    },
    ZooEntry {
        name: "RN50x64",
        repo: "timm/resnet50x64_clip.openai",
        family: "ModifiedResNet",
        layout: "open_clip",
        embed_dim: 1024,
        image_size: 448,
        in_papers: false,
    },
    ZooEntry {
        name: "ViT-L/14",
        repo: "openai/clip-vit-large-patch14",
        family: "ViT",
        layout: "hf",
        embed_dim: 768,
        image_size: 224,
        in_papers: false,
    },
    ZooEntry {
        name: "ViT-L/14@336px",
        repo: "openai/clip-vit-large-patch14-336",
        family: "ViT",
        layout: "hf",
        embed_dim: 768,
        image_size: 336,
        in_papers: false,
    },
];

/// `ViT-B/32`, `vit-b-32`, `ViT_B_32`, `ViT-L-14-336` all normalise alike.
fn normalise(name: &str) -> String {
    let s: String = name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !matches!(c, '/' | '-' | '_' | '@' | ' '))
        .collect();
    s.strip_suffix("px").map(str::to_string).unwrap_or(s)
}

/// The zoo entry a model name refers to (`RN50`, `ViT-B/16`, open_clip spellings such as
/// `ViT-B-16`); `None` for anything else (e.g. a hub id `org/name`).
pub fn lookup(name: &str) -> Option<&'static ZooEntry> {
    let n = normalise(name);
    if n.is_empty() {
        return None;
    }
    ZOO.iter().find(|e| normalise(e.name) == n)
}

/// The hub id a `--model` value resolves to: the zoo repo for an alias, else the value itself.
pub fn resolve_model_id(name: &str) -> (String, Option<&'static ZooEntry>) {
    match lookup(name) {
        Some(e) => (e.repo.to_string(), Some(e)),
        None => (name.to_string(), None),
    }
}

/// The table printed by `equirun clip --list-models`.
pub fn format_list() -> String {
    let mut s = format!(
        "{:<16} {:<30} {:<15} {:<10} {:>5} {:>6}  {}\n",
        "name", "hub repo", "vision tower", "layout", "embed", "pixels", "papers"
    );
    for e in ZOO {
        s += &format!(
            "{:<16} {:<30} {:<15} {:<10} {:>5} {:>6}  {}\n",
            e.name,
            e.repo,
            e.family,
            e.layout,
            e.embed_dim,
            e.image_size,
            if e.in_papers { "yes" } else { "" }
        );
    }
    s += "\nUse `--model NAME` (any spelling above, or open_clip's such as ViT-B-16), a hub id \
          `org/name` (HF CLIPModel or OpenCLIP layout), or `--model-dir PATH` for a local snapshot.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve() {
        assert_eq!(lookup("RN50").unwrap().repo, "timm/resnet50_clip.openai");
        assert_eq!(lookup("rn101").unwrap().name, "RN101");
        assert_eq!(
            lookup("ViT-B/16").unwrap().repo,
            "openai/clip-vit-base-patch16"
        );
        assert_eq!(lookup("ViT-B-32").unwrap().name, "ViT-B/32");
        assert_eq!(lookup("ViT-L-14-336").unwrap().image_size, 336);
        assert_eq!(lookup("ViT-L/14@336px").unwrap().image_size, 336);
        assert_eq!(lookup("ViT-L/14").unwrap().image_size, 224);
        assert!(lookup("openai/clip-vit-base-patch32").is_none());
        assert!(lookup("").is_none());
        // every name is distinct after normalisation
        for (i, a) in ZOO.iter().enumerate() {
            for b in &ZOO[i + 1..] {
                assert_ne!(normalise(a.name), normalise(b.name));
            }
        }
        let t = format_list();
        for e in ZOO {
            assert!(t.contains(e.name) && t.contains(e.repo));
        }
        assert_eq!(ZOO.iter().filter(|e| e.in_papers).count(), 4);
    }
}
