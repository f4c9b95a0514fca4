//! Where each participant's tile goes on a room composite, in LiveKit Egress's layouts:
//! `grid`, `speaker` (the speaker large, others in a strip at the side) and `single-speaker`,
//! each with `-light` or `-dark` for the background. A screen share takes the main area.

use crate::picture::{Rect, Yuv};

/// The arrangement of tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrangement {
    Grid,
    Speaker,
    SingleSpeaker,
}

/// A layout as Egress requests name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub arrangement: Arrangement,
    pub dark: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            arrangement: Arrangement::Speaker,
            dark: true,
        }
    }
}

impl Layout {
    /// Parses an Egress layout name; the empty name is Egress's default (`speaker`).
    pub fn parse(name: &str) -> Option<Layout> {
        let (base, dark) = match name {
            "" => ("speaker", true),
            n if n.ends_with("-light") => (&n[..n.len() - 6], false),
            n if n.ends_with("-dark") => (&n[..n.len() - 5], true),
            n => (n, true),
        };
        let arrangement = match base {
            "grid" => Arrangement::Grid,
            "speaker" => Arrangement::Speaker,
            "single-speaker" => Arrangement::SingleSpeaker,
            _ => return None,
        };
        Some(Layout { arrangement, dark })
    }

    pub fn background(&self) -> Yuv {
        if self.dark {
            Yuv::from_rgb(18, 18, 20)
        } else {
            Yuv::from_rgb(236, 236, 238)
        }
    }

    /// Places `tiles` (in priority order: the first is the speaker) on a `width`×`height`
    /// canvas. Returns each tile's rectangle, or `None` for a tile the layout does not show.
    /// The first screen share, if any, takes the main area whatever the arrangement (a grid
    /// then becomes the speaker arrangement).
    pub fn place(&self, width: u32, height: u32, tiles: &[Tile]) -> Vec<Option<Rect>> {
        let mut out = vec![None; tiles.len()];
        if tiles.is_empty() || width < 16 || height < 16 {
            return out;
        }
        let share = tiles.iter().position(|t| t.screen_share);
        let arrangement = match (self.arrangement, share) {
            (Arrangement::Grid, Some(_)) => Arrangement::Speaker,
            (a, _) => a,
        };
        let main = share.unwrap_or(0);
        let full = Rect::new(0, 0, width, height);
        match arrangement {
            Arrangement::SingleSpeaker => out[main] = Some(full),
            Arrangement::Grid => {
                for (slot, rect) in out.iter_mut().zip(grid(full, tiles.len(), GAP)) {
                    *slot = Some(rect);
                }
            }
            Arrangement::Speaker => {
                if tiles.len() == 1 {
                    out[main] = Some(full);
                    return out;
                }
                // The strip: a fifth of the width, 16:9 tiles stacked from the top, as many
                // as fit; the others are not shown.
                let strip_w = (width / 5) & !1;
                let tile_h = ((strip_w - 2 * GAP) * 9 / 16) & !1;
                let fits = ((height - GAP) / (tile_h + GAP)).max(1) as usize;
                out[main] = Some(Rect::new(0, 0, width - strip_w, height));
                let others = (0..tiles.len()).filter(|&i| i != main).take(fits);
                let shown = others.clone().count() as u32;
                let top = (height - shown * (tile_h + GAP) + GAP) / 2;
                for (k, i) in others.enumerate() {
                    let y = top + k as u32 * (tile_h + GAP);
                    out[i] = Some(Rect::new(
                        width - strip_w + GAP,
                        y,
                        strip_w - 2 * GAP,
                        tile_h,
                    ));
                }
            }
        }
        out
    }
}

/// Pixels between tiles.
const GAP: u32 = 4;

/// One participant's tile, as the layout needs to know it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tile {
    pub screen_share: bool,
}

/// `n` cells in rows and columns as near to square tiles as the area allows; a last row with
/// fewer cells is centred.
fn grid(area: Rect, n: usize, gap: u32) -> Vec<Rect> {
    let n = n as u32;
    // The column count that gives the largest 16:9 tiles.
    let mut best = (0u64, 1u32);
    for cols in 1..=n {
        let rows = n.div_ceil(cols);
        let cw = u64::from(area.width / cols);
        let ch = u64::from(area.height / rows);
        let w = cw.min(ch * 16 / 9);
        let h = w * 9 / 16;
        // Ties go to more columns: side by side on a landscape canvas.
        if w * h >= best.0 {
            best = (w * h, cols);
        }
    }
    let cols = best.1;
    let rows = n.div_ceil(cols);
    let cw = area.width / cols;
    let ch = area.height / rows;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        let in_row = if r == rows - 1 { n - r * cols } else { cols };
        let x0 = area.x + (area.width - in_row * cw) / 2;
        let y0 = area.y + (area.height - rows * ch) / 2;
        out.push(Rect::new(
            x0 + c * cw + gap / 2,
            y0 + r * ch + gap / 2,
            cw.saturating_sub(gap),
            ch.saturating_sub(gap),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disjoint(rects: &[Rect]) -> bool {
        rects.iter().enumerate().all(|(i, a)| {
            rects[i + 1..].iter().all(|b| {
                a.x + a.width <= b.x
                    || b.x + b.width <= a.x
                    || a.y + a.height <= b.y
                    || b.y + b.height <= a.y
            })
        })
    }

    #[test]
    fn names_parse_as_egress_names_them() {
        assert_eq!(
            Layout::parse("grid").unwrap().arrangement,
            Arrangement::Grid
        );
        assert!(!Layout::parse("grid-light").unwrap().dark);
        assert_eq!(
            Layout::parse("single-speaker-dark").unwrap().arrangement,
            Arrangement::SingleSpeaker
        );
        assert_eq!(Layout::parse("").unwrap(), Layout::default());
        assert_eq!(Layout::parse("mosaic"), None);
    }

    #[test]
    fn a_grid_shows_everyone_inside_the_canvas_without_overlap() {
        let layout = Layout::parse("grid").unwrap();
        for n in [1, 2, 3, 4, 5, 9, 25, 150] {
            let rects: Vec<Rect> = layout
                .place(1280, 720, &vec![Tile::default(); n])
                .into_iter()
                .map(|r| r.expect("every tile shown"))
                .collect();
            assert!(disjoint(&rects), "{n}");
            assert!(
                rects
                    .iter()
                    .all(|r| r.x + r.width <= 1280 && r.y + r.height <= 720)
            );
            assert!(rects.iter().all(|r| r.width > 0 && r.height > 0), "{n}");
        }
        // Four tiles: two by two, each about a quarter of the canvas.
        let four = layout.place(1280, 720, &[Tile::default(); 4]);
        assert_eq!(four[0], Some(Rect::new(2, 2, 636, 356)));
        assert_eq!(four[3], Some(Rect::new(642, 362, 636, 356)));
    }

    #[test]
    fn the_speaker_is_large_and_the_others_in_a_strip() {
        let layout = Layout::parse("speaker").unwrap();
        let rects = layout.place(1280, 720, &[Tile::default(); 30]);
        let main = rects[0].unwrap();
        assert_eq!(main, Rect::new(0, 0, 1024, 720));
        let strip: Vec<Rect> = rects[1..].iter().flatten().copied().collect();
        assert!(!strip.is_empty() && strip.len() < 29, "{}", strip.len());
        assert!(strip.iter().all(|r| r.x >= 1024 && r.y + r.height <= 720));
        let mut all = strip.clone();
        all.push(main);
        assert!(disjoint(&all));
    }

    #[test]
    fn a_screen_share_takes_the_main_area() {
        let mut tiles = vec![Tile::default(); 4];
        tiles[2].screen_share = true;
        for name in ["grid", "speaker", "single-speaker"] {
            let rects = Layout::parse(name).unwrap().place(1280, 720, &tiles);
            let main = rects[2].expect(name);
            assert!(main.width >= 1024, "{name}: {main:?}");
        }
        let single = Layout::parse("single-speaker")
            .unwrap()
            .place(1280, 720, &tiles);
        assert_eq!(single.iter().flatten().count(), 1);
    }
}
