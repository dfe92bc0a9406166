//! Class names and prompt templates (CLIP's curated lists; see prompts/SOURCES.md).

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

pub fn imagenet_classes() -> Vec<String> {
    lines(include_str!("prompts/imagenet_classes.txt"))
}
pub fn imagenet_templates() -> Vec<String> {
    lines(include_str!("prompts/imagenet_templates.txt"))
}
pub fn cifar_templates() -> Vec<String> {
    lines(include_str!("prompts/cifar_templates.txt"))
}
pub fn cifar10_classes() -> Vec<String> {
    lines(include_str!("prompts/cifar10_classes.txt"))
}
pub fn cifar100_classes() -> Vec<String> {
    lines(include_str!("prompts/cifar100_classes.txt"))
}
pub fn fashion_mnist_classes() -> Vec<String> {
    lines(include_str!("prompts/fashion_mnist_classes.txt"))
}

/// Reads a templates file (one template per line, each with exactly one `{}`).
pub fn read_templates(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read templates file {}: {e}", path.display()))?;
    let t = lines(&text);
    for (i, l) in t.iter().enumerate() {
        if l.matches("{}").count() != 1 {
            anyhow::bail!(
                "{}:{}: template {l:?} must contain exactly one '{{}}'",
                path.display(),
                i + 1
            );
        }
    }
    if t.is_empty() {
        anyhow::bail!("templates file {} is empty", path.display());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn counts() {
        assert_eq!(imagenet_classes().len(), 1000);
        assert_eq!(imagenet_templates().len(), 80);
        assert_eq!(cifar_templates().len(), 18);
        assert_eq!(cifar10_classes().len(), 10);
        assert_eq!(cifar100_classes().len(), 100);
        assert_eq!(fashion_mnist_classes().len(), 10);
        for t in imagenet_templates().iter().chain(cifar_templates().iter()) {
            assert_eq!(t.matches("{}").count(), 1, "{t}");
        }
        assert_eq!(cifar100_classes()[1], "aquarium fish");
    }
}
