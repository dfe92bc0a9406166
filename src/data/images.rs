//! Labelled image datasets: CIFAR-10/100 binary, Fashion-MNIST idx(.gz), ImageNet-V2 folders,
//! and a plain folder-per-class layout. Images are decoded lazily, one batch at a time.

use super::prompts;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Cifar100,
    Cifar10,
    #[value(name = "imagenet-v2")]
    #[serde(rename = "imagenet-v2")]
    ImagenetV2,
    FashionMnist,
    Folder,
}

impl DatasetKind {
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::ImagenetV2 => "imagenet-v2",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Folder => "folder",
        }
    }
}

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

enum Storage {
    /// Raw interleaved-plane records (CIFAR): `[label bytes][R plane][G plane][B plane]`.
    Cifar {
        bytes: Vec<u8>,
        record: usize,
        header: usize,
        side: usize,
    },
    /// Grayscale images back to back (idx).
    Gray {
        bytes: Vec<u8>,
        rows: usize,
        cols: usize,
    },
    Files(Vec<PathBuf>),
}

/// A decoded 8-bit RGB image.
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// Interleaved RGB, row-major.
    pub data: Vec<u8>,
}

pub struct ImageDataset {
    pub kind: DatasetKind,
    pub source: PathBuf,
    pub classes: Vec<String>,
    pub templates: Vec<String>,
    labels: Vec<u32>,
    storage: Storage,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }
    /// Keeps the first `n` examples.
    pub fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        if let Storage::Files(f) = &mut self.storage {
            f.truncate(n);
        }
    }
    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }
    /// The raw 8-bit pixels of a grayscale dataset (Fashion-MNIST): `(bytes, rows, cols)`,
    /// image `i` at `bytes[i·rows·cols..]`; `None` for colour datasets.
    pub fn gray_pixels(&self) -> Option<(&[u8], usize, usize)> {
        match &self.storage {
            Storage::Gray { bytes, rows, cols } => {
                Some((&bytes[..self.labels.len() * rows * cols], *rows, *cols))
            }
            _ => None,
        }
    }
    pub fn image(&self, i: usize) -> Result<RgbImage> {
        match &self.storage {
            Storage::Cifar {
                bytes,
                record,
                header,
                side,
            } => {
                let rec = &bytes[i * record + header..(i + 1) * record];
                let plane = side * side;
                let mut data = Vec::with_capacity(3 * plane);
                for p in 0..plane {
                    data.extend_from_slice(&[rec[p], rec[plane + p], rec[2 * plane + p]]);
                }
                Ok(RgbImage {
                    width: *side,
                    height: *side,
                    data,
                })
            }
            Storage::Gray { bytes, rows, cols } => {
                let n = rows * cols;
                let g = &bytes[i * n..(i + 1) * n];
                Ok(RgbImage {
                    width: *cols,
                    height: *rows,
                    data: g.iter().flat_map(|&v| [v, v, v]).collect(),
                })
            }
            Storage::Files(files) => {
                let p = &files[i];
                let img = image::open(p)
                    .with_context(|| format!("cannot decode image {}", p.display()))?
                    .to_rgb8();
                Ok(RgbImage {
                    width: img.width() as usize,
                    height: img.height() as usize,
                    data: img.into_raw(),
                })
            }
        }
    }
}

fn first_existing(cands: &[PathBuf]) -> Option<PathBuf> {
    cands.iter().find(|p| p.is_file()).cloned()
}

fn need_dir(kind: DatasetKind, dir: Option<&Path>) -> Result<PathBuf> {
    dir.map(Path::to_path_buf).ok_or_else(|| {
        anyhow!(
            "dataset {} needs --data-dir PATH (or the EQUIRUN_DATA environment variable)",
            kind.name()
        )
    })
}

/// Which split of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
}

/// Opens a dataset's test split.
pub fn open(kind: DatasetKind, dir: Option<&Path>) -> Result<ImageDataset> {
    open_split(kind, dir, Split::Test)
}

/// Opens a dataset's train or test split (CIFAR-10/100 and Fashion-MNIST have both).
pub fn open_split(kind: DatasetKind, dir: Option<&Path>, split: Split) -> Result<ImageDataset> {
    if split == Split::Train && matches!(kind, DatasetKind::ImagenetV2 | DatasetKind::Folder) {
        bail!(
            "dataset {} has no train split here; finetuning needs cifar10, cifar100 or fashion-mnist",
            kind.name()
        );
    }
    match kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let d = need_dir(kind, dir)?;
            let (sub, header, n_classes, classes) = if kind == DatasetKind::Cifar10 {
                (
                    "cifar-10-batches-bin",
                    1usize,
                    10u32,
                    prompts::cifar10_classes(),
                )
            } else {
                (
                    "cifar-100-binary",
                    2usize,
                    100u32,
                    prompts::cifar100_classes(),
                )
            };
            let files: Vec<&str> = match (kind, split) {
                (DatasetKind::Cifar10, Split::Test) => vec!["test_batch.bin"],
                (DatasetKind::Cifar10, Split::Train) => vec![
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ],
                (_, Split::Test) => vec!["test.bin"],
                (_, Split::Train) => vec!["train.bin"],
            };
            let mut paths = Vec::new();
            for file in &files {
                let path =
                    if d.is_file() && files.len() == 1 {
                        d.clone()
                    } else {
                        match first_existing(&[d.join(sub).join(file), d.join(file)]) {
                            Some(p) => p,
                            // CIFAR-10 train: the batches present (at least the first)
                            None if paths.len() > 0 => continue,
                            None => bail!(
                            "no {} {} file under {}: expected {}/{}/{} (the CIFAR binary version)",
                            kind.name(),
                            if split == Split::Train { "train" } else { "test" },
                            d.display(),
                            d.display(),
                            sub,
                            file
                        ),
                        }
                    };
                paths.push(path);
            }
            let path = paths[0].clone();
            let mut bytes = Vec::new();
            for p in &paths {
                bytes.extend(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
            }
            let record = header + 3072;
            let labels = parse_cifar_labels(&bytes, header, n_classes, &path, kind.name())?;
            Ok(ImageDataset {
                kind,
                source: path,
                classes,
                templates: prompts::cifar_templates(),
                labels,
                storage: Storage::Cifar {
                    bytes,
                    record,
                    header,
                    side: 32,
                },
            })
        }
        DatasetKind::FashionMnist => {
            let d = dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST));
            let find = |stem: &str| {
                first_existing(&[
                    d.join(format!("{stem}.gz")),
                    d.join(stem),
                    d.join("fashion-mnist").join(format!("{stem}.gz")),
                    d.join("fashion-mnist").join(stem),
                ])
                .ok_or_else(|| {
                    anyhow!(
                        "no Fashion-MNIST file {stem}(.gz) under {}; install Debian's dataset-fashion-mnist \
                         (files in {DEBIAN_FASHION_MNIST}) or pass --data-dir",
                        d.display()
                    )
                })
            };
            let prefix = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            let ip = find(&format!("{prefix}-images-idx3-ubyte"))?;
            let lp = find(&format!("{prefix}-labels-idx1-ubyte"))?;
            let (ibytes, idims) = read_idx(&ip, 3)?;
            let (lbytes, ldims) = read_idx(&lp, 1)?;
            if idims[0] != ldims[0] {
                bail!(
                    "{} has {} images but {} has {} labels",
                    ip.display(),
                    idims[0],
                    lp.display(),
                    ldims[0]
                );
            }
            let labels: Vec<u32> = lbytes.iter().map(|&b| b as u32).collect();
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l >= 10) {
                bail!("malformed label file {}: label {l} at index {i} (Fashion-MNIST has 10 classes)", lp.display());
            }
            Ok(ImageDataset {
                kind,
                source: ip,
                classes: prompts::fashion_mnist_classes(),
                templates: prompts::cifar_templates(),
                labels,
                storage: Storage::Gray {
                    bytes: ibytes,
                    rows: idims[1],
                    cols: idims[2],
                },
            })
        }
        DatasetKind::ImagenetV2 => {
            let d = need_dir(kind, dir)?;
            let root = [
                "imagenetv2-matched-frequency-format-val",
                "imagenetv2-matched-frequency",
            ]
            .iter()
            .map(|s| d.join(s))
            .find(|p| p.is_dir())
            .unwrap_or(d.clone());
            let mut files = Vec::new();
            let mut labels = Vec::new();
            for c in 0..1000u32 {
                let cd = root.join(c.to_string());
                if !cd.is_dir() {
                    bail!(
                        "ImageNet-V2 layout: missing class folder {} (expected folders 0..999 of images)",
                        cd.display()
                    );
                }
                for f in list_images(&cd)? {
                    files.push(f);
                    labels.push(c);
                }
            }
            if files.is_empty() {
                bail!(
                    "ImageNet-V2 folder {} has its 1000 class folders but no images (.jpg/.jpeg/.png)",
                    root.display()
                );
            }
            Ok(ImageDataset {
                kind,
                source: root,
                classes: prompts::imagenet_classes(),
                templates: prompts::imagenet_templates(),
                labels,
                storage: Storage::Files(files),
            })
        }
        DatasetKind::Folder => {
            let d = need_dir(kind, dir)?;
            let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(&d)
                .with_context(|| format!("reading folder dataset {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            class_dirs.sort();
            if class_dirs.is_empty() {
                bail!("folder dataset {} has no class subfolders (expected <root>/<class name>/<images>)", d.display());
            }
            let mut files = Vec::new();
            let mut labels = Vec::new();
            let mut classes = Vec::new();
            for (c, cd) in class_dirs.iter().enumerate() {
                classes.push(cd.file_name().unwrap().to_string_lossy().replace('_', " "));
                for f in list_images(cd)? {
                    files.push(f);
                    labels.push(c as u32);
                }
            }
            if files.is_empty() {
                bail!(
                    "folder dataset {} has {} class subfolders but no images (.jpg/.jpeg/.png) in them",
                    d.display(),
                    class_dirs.len()
                );
            }
            Ok(ImageDataset {
                kind,
                source: d,
                classes,
                templates: prompts::cifar_templates(),
                labels,
                storage: Storage::Files(files),
            })
        }
    }
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .map(|e| {
                    matches!(
                        e.to_ascii_lowercase().to_str(),
                        Some("jpg" | "jpeg" | "png")
                    )
                })
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The largest decompressed idx file read (1 GiB; Fashion-MNIST's train images are 47 MB):
/// a gzip bomb or a header claiming terabytes is an error, not an out-of-memory abort.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an idx file (optionally gzipped) with `ndim` dimensions of u8 data.
pub fn read_idx(path: &Path, ndim: usize) -> Result<(Vec<u8>, Vec<usize>)> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            bail!(
                "malformed idx file {}: decompresses to more than {} bytes",
                path.display(),
                MAX_IDX_BYTES
            );
        }
        out
    } else {
        raw
    };
    let dims = parse_idx_header(&bytes, ndim, path)?;
    Ok((bytes[4 + 4 * ndim..].to_vec(), dims))
}

/// Checks an idx buffer (magic, `ndim` big-endian u32 dimensions, u8 data) and returns the
/// dimensions. The data size is the *checked* product of the dimensions and must equal the
/// bytes after the header; every dimension must be at least 1 (an empty idx file is an error
/// naming the file). Never panics, whatever the bytes.
pub fn parse_idx_header(bytes: &[u8], ndim: usize, path: &Path) -> Result<Vec<usize>> {
    let header = 4 + 4 * ndim;
    if ndim == 0
        || ndim > 255
        || bytes.len() < header
        || bytes[0] != 0
        || bytes[1] != 0
        || bytes[2] != 0x08
        || bytes[3] as usize != ndim
    {
        bail!(
            "malformed idx file {}: expected magic 0x0000080{ndim} (u8 data, {ndim} dims) and a \
             {header}-byte header",
            path.display()
        );
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        bail!(
            "malformed idx file {}: dimension {i} of {:?} is 0 (no {})",
            path.display(),
            dims,
            if i == 0 { "examples" } else { "pixels" }
        );
    }
    let data = bytes.len() - header;
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n == data);
    match n {
        Some(_) => Ok(dims),
        None => bail!(
            "malformed idx file {}: header says {:?} ({} bytes of data) but the file has {}",
            path.display(),
            dims,
            dims.iter()
                .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
                .map(|v| v.to_string())
                .unwrap_or_else(|| "an overflowing number of".into()),
            data
        ),
    }
}

/// Checks CIFAR binary records (`header` label bytes, the last the class, then 3072 pixels)
/// and returns the labels. `path` and `dataset` only name things in errors. Never panics.
pub fn parse_cifar_labels(
    bytes: &[u8],
    header: usize,
    n_classes: u32,
    path: &Path,
    dataset: &str,
) -> Result<Vec<u32>> {
    if header == 0 {
        bail!("CIFAR records need at least one label byte");
    }
    let record = header + 3072;
    if bytes.is_empty() || bytes.len() % record != 0 {
        bail!(
            "malformed CIFAR file {}: {} bytes is not a multiple of the {}-byte record \
             ({} label byte(s) + 3072 pixels); is this the binary version of {}?",
            path.display(),
            bytes.len(),
            record,
            header,
            dataset
        );
    }
    let mut labels = Vec::with_capacity(bytes.len() / record);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let l = rec[header - 1] as u32;
        if l >= n_classes {
            bail!(
                "malformed CIFAR file {}: record {} has label {l}, but {} has {n_classes} classes",
                path.display(),
                i,
                dataset
            );
        }
        labels.push(l);
    }
    Ok(labels)
}
