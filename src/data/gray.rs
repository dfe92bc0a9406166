//! Grayscale image data for the CNN experiments (`cnn`, `multi-image`): Fashion-MNIST or a
//! folder of images in memory, per-image corruptions by an image group (gather tables), batches,
//! and k-tuples of same-class images.

use crate::data::images::{self, DatasetKind, Split};
use crate::groups::image::D4;
use crate::groups::FiniteGroup;
use crate::output::{self, progress_bar};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::{Path, PathBuf};

/// Fashion-MNIST mean and standard deviation of the pixel values in [0, 1].
pub const FASHION_MEAN: f32 = 0.2860;
pub const FASHION_STD: f32 = 0.3530;

/// Fashion-MNIST in memory: raw pixels and labels.
pub struct GrayData {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub side: usize,
    pub source: PathBuf,
}

impl GrayData {
    pub fn load(dir: Option<&Path>, split: Split, limit: Option<usize>) -> Result<GrayData> {
        let mut ds = images::open_split(DatasetKind::FashionMnist, dir, split)?;
        if let Some(n) = limit {
            ds.truncate(n);
        }
        let (px, rows, cols) = ds.gray_pixels().context("Fashion-MNIST is grayscale")?;
        if rows != cols || rows % 4 != 0 {
            bail!(
                "{}: images are {rows}×{cols}; the CNN needs square images with a side divisible by 4",
                ds.source.display()
            );
        }
        if ds.is_empty() {
            bail!("{} has no images", ds.source.display());
        }
        Ok(GrayData {
            pixels: px.to_vec(),
            labels: ds.labels().to_vec(),
            side: rows,
            source: ds.source.clone(),
        })
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Corruption lookup tables: one gather table per element of a group, over `side × side`.
pub struct Corruptor {
    pub group: Option<FiniteGroup<D4>>,
    tables: Vec<Vec<u32>>,
}

impl Corruptor {
    pub fn new(group: Option<FiniteGroup<D4>>, side: usize) -> Result<Corruptor> {
        let tables = match &group {
            None => vec![],
            Some(g) => (0..g.order())
                .map(|e| g.element(e).gather_indices(side, side))
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Corruptor { group, tables })
    }
    pub fn order(&self) -> usize {
        self.group.as_ref().map(|g| g.order()).unwrap_or(1)
    }
    pub fn name(&self) -> String {
        self.group
            .as_ref()
            .map(|g| g.name().to_string())
            .unwrap_or_else(|| "none".into())
    }
    /// One random element per image (identity when there is no group).
    pub fn draw(&self, rng: &mut impl Rng, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                if self.tables.is_empty() {
                    0
                } else {
                    rng.random_range(0..self.tables.len())
                }
            })
            .collect()
    }
}

/// A normalised batch `[B, 1, S, S]` of images `idx`, image `k` transformed by element
/// `elems[k]` of the corruptor's group (exactly `D4::apply`, done while gathering).
pub fn make_batch(
    d: &GrayData,
    idx: &[usize],
    elems: &[usize],
    c: &Corruptor,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = d.side * d.side;
    let mut v = Vec::with_capacity(idx.len() * n);
    for (k, &i) in idx.iter().enumerate() {
        let img = &d.pixels[i * n..(i + 1) * n];
        let norm = |p: u8| (p as f32 / 255.0 - FASHION_MEAN) / FASHION_STD;
        match elems.get(k).copied().unwrap_or(0) {
            0 => v.extend(img.iter().map(|&p| norm(p))),
            e => v.extend(c.tables[e].iter().map(|&j| norm(img[j as usize]))),
        }
    }
    let labels: Vec<u32> = idx.iter().map(|&i| d.labels[i]).collect();
    Ok((
        Tensor::from_vec(v, (idx.len(), 1, d.side, d.side), dev)?,
        Tensor::from_vec(labels, idx.len(), dev)?,
    ))
}

/// A folder-per-class dataset as grayscale `side`×`side` images (ITU-R 601 luma, bilinear
/// resize), without `BACKGROUND_Google` (Caltech101's clutter folder is not a class), split into
/// (train, test) 80/20 by a fixed-seed shuffle. Returns the class names too.
pub fn folder_gray(
    dir: &std::path::Path,
    side: usize,
) -> Result<(GrayData, GrayData, Vec<String>)> {
    if side == 0 || side % 4 != 0 {
        bail!("--image-size {side} must be a positive multiple of 4");
    }
    let ds = images::open(DatasetKind::Folder, Some(dir))?;
    let keep: Vec<usize> = (0..ds.classes.len())
        .filter(|&c| ds.classes[c] != "BACKGROUND Google")
        .collect();
    let classes: Vec<String> = keep.iter().map(|&c| ds.classes[c].clone()).collect();
    let mut items: Vec<(Vec<u8>, u32)> = Vec::new();
    let pb = progress_bar(ds.len() as u64, "decoding images");
    for i in 0..ds.len() {
        pb.inc(1);
        let Some(c) = keep.iter().position(|&k| k == ds.label(i) as usize) else {
            continue;
        };
        let img = ds.image(i)?;
        let luma: Vec<u8> = img
            .data
            .chunks_exact(3)
            .map(|p| {
                ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114 + 500) / 1000) as u8
            })
            .collect();
        let g = image::GrayImage::from_raw(img.width as u32, img.height as u32, luma)
            .ok_or_else(|| anyhow!("image {i} of {} has inconsistent size", dir.display()))?;
        let r = image::imageops::resize(
            &g,
            side as u32,
            side as u32,
            image::imageops::FilterType::Triangle,
        );
        items.push((r.into_raw(), c as u32));
    }
    pb.finish_and_clear();
    if classes.len() < 2 || items.is_empty() {
        bail!(
            "{}: need at least two class folders with images (BACKGROUND_Google does not count)",
            dir.display()
        );
    }
    let mut rng = output::rng_for(1234, "folder-split");
    items.shuffle(&mut rng);
    let n_test = items.len() / 5;
    let mk = |part: &[(Vec<u8>, u32)]| GrayData {
        pixels: part.iter().flat_map(|x| x.0.iter().copied()).collect(),
        labels: part.iter().map(|x| x.1).collect(),
        side,
        source: dir.to_path_buf(),
    };
    Ok((mk(&items[n_test..]), mk(&items[..n_test]), classes))
}

/// k-tuples of image indices of one class.
#[derive(Clone, Debug)]
pub struct Tuples {
    pub idx: Vec<Vec<usize>>,
    pub labels: Vec<u32>,
}

/// Groups `indices` by class (in order), chunks each class into consecutive k-tuples (remainder
/// dropped) and shuffles the tuples with `rng`.
pub fn make_tuples(labels: &[u32], indices: &[usize], k: usize, rng: &mut impl Rng) -> Tuples {
    let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for &i in indices {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let mut t: Vec<(Vec<usize>, u32)> = Vec::new();
    for (c, v) in by_class {
        for chunk in v.chunks_exact(k) {
            t.push((chunk.to_vec(), c));
        }
    }
    t.shuffle(rng);
    Tuples {
        idx: t.iter().map(|x| x.0.clone()).collect(),
        labels: t.iter().map(|x| x.1).collect(),
    }
}
