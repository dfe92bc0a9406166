//! Figure output shared by `equirun report` and the regard report: an embedded font (no system
//! fonts needed) and one routine that renders a figure as SVG and PNG, written atomically.

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The font family every figure uses.
pub const FONT: &str = "monospace";

/// Registers the embedded font (Hack Regular, MIT/Bitstream Vera, from crate `epaint_default_fonts`) once: plotters'
/// ab_glyph text needs no system fonts.
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let _ = plotters::style::register_font(FONT, style, epaint_default_fonts::HACK_REGULAR);
        }
    });
}

/// Renders one figure twice (SVG text, RGB bitmap) and writes `<dir>/<slug>.svg` and
/// `<dir>/<slug>.png` atomically; both closures draw the same figure on their backend.
pub fn write_svg_png(
    dir: &Path,
    slug: &str,
    (w, h): (u32, u32),
    draw_svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    register_font();
    let svg = dir.join(format!("{slug}.svg"));
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
        draw_svg(root).with_context(|| format!("plotting {}", svg.display()))?;
    }
    crate::output::write_bytes_atomic(&svg, text.as_bytes())?;
    let png = dir.join(format!("{slug}.png"));
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw_png(root).with_context(|| format!("plotting {}", png.display()))?;
    }
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("bitmap size mismatch"))?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("encoding {}", png.display()))?;
    crate::output::write_bytes_atomic(&png, &bytes)?;
    Ok(vec![svg, png])
}
