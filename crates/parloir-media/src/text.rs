//! Names under tiles: text rasterised on the CPU with a TrueType font from the system
//! (DejaVu Sans, Debian's fonts-dejavu-core), kept as coverage masks to blend onto the
//! canvas. Without a font, tiles carry no names and the recording goes on.

use std::collections::HashMap;
use std::path::Path;

/// Where the font is looked for, in order.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// A rasterised line of text: a coverage mask `width` wide.
#[derive(Debug, Clone)]
pub struct Label {
    pub width: u32,
    pub height: u32,
    pub mask: Vec<u8>,
}

/// Rasterises and caches labels.
pub struct Labeler {
    font: fontdue::Font,
    cache: HashMap<(String, u32, u32), Label>,
}

impl Labeler {
    /// Loads the first font of [`FONT_PATHS`] that reads and parses.
    pub fn system() -> Option<Labeler> {
        FONT_PATHS
            .iter()
            .find_map(|p| Labeler::from_file(Path::new(p)).ok())
    }

    pub fn from_file(path: &Path) -> Result<Labeler, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let font = fontdue::Font::from_bytes(bytes, fontdue::FontSettings::default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Labeler {
            font,
            cache: HashMap::new(),
        })
    }

    /// `text` at `size` pixels, cut with an ellipsis to at most `max_width` pixels.
    pub fn label(&mut self, text: &str, size: u32, max_width: u32) -> &Label {
        let key = (text.to_string(), size, max_width);
        if !self.cache.contains_key(&key) {
            // Names change rarely; a cache that outgrows any meeting is simply reset.
            if self.cache.len() > 4096 {
                self.cache.clear();
            }
            let label = self.render(text, size as f32, max_width);
            self.cache.insert(key.clone(), label);
        }
        &self.cache[&key]
    }

    fn render(&self, text: &str, px: f32, max_width: u32) -> Label {
        let ellipsis = self.font.metrics('…', px).advance_width;
        let mut glyphs: Vec<char> = Vec::new();
        let mut width = 0.0f32;
        let chars: Vec<char> = text.chars().filter(|c| !c.is_control()).collect();
        let total: f32 = chars
            .iter()
            .map(|&c| self.font.metrics(c, px).advance_width)
            .sum();
        let limit = max_width as f32;
        for &c in &chars {
            let w = self.font.metrics(c, px).advance_width;
            if total > limit && width + w + ellipsis > limit {
                glyphs.push('…');
                width += ellipsis;
                break;
            }
            glyphs.push(c);
            width += w;
        }
        let line = self.font.horizontal_line_metrics(px);
        let (ascent, descent) = line.map_or((px * 0.8, -px * 0.2), |m| (m.ascent, m.descent));
        let height = (ascent - descent).ceil().max(1.0) as u32;
        let w = (width.ceil() as u32).clamp(1, max_width.max(1));
        let mut mask = vec![0u8; (w * height) as usize];
        let mut pen = 0.0f32;
        for c in glyphs {
            let (m, bitmap) = self.font.rasterize(c, px);
            let left = (pen + m.xmin as f32).round() as i64;
            // Glyph rows go from its top (baseline - ymin - height) down.
            let top = (ascent - m.ymin as f32 - m.height as f32).round() as i64;
            for gy in 0..m.height {
                for gx in 0..m.width {
                    let (x, y) = (left + gx as i64, top + gy as i64);
                    if x < 0 || y < 0 || x >= i64::from(w) || y >= i64::from(height) {
                        continue;
                    }
                    let i = (y as u32 * w + x as u32) as usize;
                    mask[i] = mask[i].max(bitmap[gy * m.width + gx]);
                }
            }
            pen += m.advance_width;
        }
        Label {
            width: w,
            height,
            mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_render_and_long_ones_are_cut() {
        let Some(mut labeler) = Labeler::system() else {
            panic!("no system font at {FONT_PATHS:?}: the setup installs fonts-dejavu-core");
        };
        let short = labeler.label("Élise Martin", 16, 400).clone();
        assert!(short.width > 60 && short.width < 200, "{}", short.width);
        assert!(short.height >= 16 && short.height <= 24);
        assert!(short.mask.iter().filter(|&&a| a > 128).count() > 100);
        let long = labeler
            .label("Marie-Christine de la Tour d'Auvergne-Lauraguais", 16, 120)
            .clone();
        assert!(long.width <= 120, "{}", long.width);
    }
}
