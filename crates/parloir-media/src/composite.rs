//! The compositor: places each participant's latest picture on the canvas as the layout says
//! (cameras cropped to fill their tile, screen shares shown whole), draws names under tiles and
//! a border around whoever speaks. It draws on a [`Surface`]: a [`Picture`] in memory (the CPU
//! path, and the reference) or a canvas on the GPU ([`crate::gpu::GpuCanvas`]), with the same
//! bytes either way.

use crate::MediaError;
use crate::layout::{Layout, Tile};
use crate::picture::{Picture, Rect, Yuv};
use crate::text::Labeler;

/// What the compositor draws on: a canvas, and the pictures it takes tiles from.
pub trait Surface {
    /// A picture tiles are taken from.
    type Source;
    fn width(&self) -> u32;
    fn height(&self) -> u32;
    fn source_size(source: &Self::Source) -> (u32, u32);
    fn fill(&mut self, r: Rect, colour: Yuv) -> Result<(), MediaError>;
    /// Scales `src_rect` of `src` into `dst_rect` (bilinear).
    fn blit(
        &mut self,
        dst_rect: Rect,
        src: &Self::Source,
        src_rect: Rect,
    ) -> Result<(), MediaError>;
    fn border(&mut self, r: Rect, thickness: u32, colour: Yuv) -> Result<(), MediaError>;
    /// Blends a coverage mask of one colour with its top-left at (x, y).
    fn blend_mask(
        &mut self,
        x: i64,
        y: i64,
        mask: &[u8],
        mask_width: u32,
        colour: Yuv,
    ) -> Result<(), MediaError>;
}

impl Surface for Picture {
    type Source = Picture;

    fn width(&self) -> u32 {
        Picture::width(self)
    }

    fn height(&self) -> u32 {
        Picture::height(self)
    }

    fn source_size(source: &Picture) -> (u32, u32) {
        (source.width(), source.height())
    }

    fn fill(&mut self, r: Rect, colour: Yuv) -> Result<(), MediaError> {
        Picture::fill(self, r, colour);
        Ok(())
    }

    fn blit(&mut self, dst_rect: Rect, src: &Picture, src_rect: Rect) -> Result<(), MediaError> {
        Picture::blit(self, dst_rect, src, src_rect);
        Ok(())
    }

    fn border(&mut self, r: Rect, thickness: u32, colour: Yuv) -> Result<(), MediaError> {
        Picture::border(self, r, thickness, colour);
        Ok(())
    }

    fn blend_mask(
        &mut self,
        x: i64,
        y: i64,
        mask: &[u8],
        mask_width: u32,
        colour: Yuv,
    ) -> Result<(), MediaError> {
        Picture::blend_mask(self, x, y, mask, mask_width, colour);
        Ok(())
    }
}

/// One tile as the compositor draws it.
#[derive(Debug)]
pub struct TileView<'a, P = Picture> {
    /// The latest picture; `None` shows a placeholder with the name.
    pub picture: Option<&'a P>,
    pub name: &'a str,
    pub speaking: bool,
    pub screen_share: bool,
}

// By hand: a derive would ask `P: Clone`, and a GPU picture is not.
impl<P> Clone for TileView<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for TileView<'_, P> {}

pub struct Compositor<S = Picture> {
    canvas: S,
    layout: Layout,
    labels: Option<Labeler>,
}

const SPEAKING: Yuv = Yuv {
    y: 145,
    u: 54,
    v: 34,
};
const PLACEHOLDER: Yuv = Yuv {
    y: 48,
    u: 128,
    v: 128,
};

fn labeler() -> Option<Labeler> {
    let labels = Labeler::system();
    if labels.is_none() {
        tracing::warn!(
            fonts = ?crate::text::FONT_PATHS,
            "no font found: recordings will have no names under tiles"
        );
    }
    labels
}

impl Compositor {
    /// A compositor for a `width`×`height` canvas in memory (both made even). Names need a
    /// system font; without one, tiles have no names (logged).
    pub fn new(width: u32, height: u32, layout: Layout) -> Compositor {
        Compositor::on(
            Picture::new(width & !1, height & !1, layout.background()),
            layout,
        )
    }
}

impl<S: Surface> Compositor<S> {
    /// A compositor drawing on `canvas`.
    pub fn on(canvas: S, layout: Layout) -> Compositor<S> {
        Compositor {
            canvas,
            layout,
            labels: labeler(),
        }
    }

    /// The canvas (as last drawn).
    pub fn canvas(&self) -> &S {
        &self.canvas
    }

    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Where tiles go, for choosing each track's layer by its tile's size.
    pub fn placement(&self, tiles: &[Tile]) -> Vec<Option<Rect>> {
        self.layout
            .place(self.canvas.width(), self.canvas.height(), tiles)
    }

    /// Draws a frame.
    pub fn compose(&mut self, tiles: &[TileView<'_, S::Source>]) -> Result<&S, MediaError> {
        let specs: Vec<Tile> = tiles
            .iter()
            .map(|t| Tile {
                screen_share: t.screen_share,
            })
            .collect();
        let rects = self.placement(&specs);
        let (w, h) = (self.canvas.width(), self.canvas.height());
        self.canvas
            .fill(Rect::new(0, 0, w, h), self.layout.background())?;
        for (tile, rect) in tiles.iter().zip(rects) {
            let Some(rect) = rect else { continue };
            match tile.picture {
                Some(p) if tile.screen_share => {
                    self.canvas.fill(rect, Yuv::BLACK)?;
                    let (pw, ph) = S::source_size(p);
                    let inner = rect.contain(pw, ph);
                    self.canvas.blit(inner, p, Rect::new(0, 0, pw, ph))?;
                }
                Some(p) => {
                    let (pw, ph) = S::source_size(p);
                    let crop = rect.cover_crop(pw, ph);
                    self.canvas.blit(rect, p, crop)?;
                }
                None => self.canvas.fill(rect, PLACEHOLDER)?,
            }
            if tile.speaking && !tile.screen_share {
                let t = (rect.height / 60).max(2);
                self.canvas.border(rect, t, SPEAKING)?;
            }
            self.name(rect, tile.name, tile.picture.is_none())?;
        }
        Ok(&self.canvas)
    }

    /// The name at the tile's bottom left (centred, larger, on a placeholder), with a shadow
    /// so it reads on any picture.
    fn name(&mut self, rect: Rect, name: &str, centred: bool) -> Result<(), MediaError> {
        let Some(labels) = self.labels.as_mut() else {
            return Ok(());
        };
        if name.is_empty() || rect.height < 24 || rect.width < 32 {
            return Ok(());
        }
        let size = if centred {
            (rect.height / 8).clamp(10, 36)
        } else {
            (rect.height / 14).clamp(9, 22)
        };
        let margin = (size / 2).max(4);
        let label = labels.label(name, size, rect.width.saturating_sub(2 * margin));
        let (x, y) = if centred {
            (
                rect.x + (rect.width.saturating_sub(label.width)) / 2,
                rect.y + (rect.height.saturating_sub(label.height)) / 2,
            )
        } else {
            (
                rect.x + margin,
                (rect.y + rect.height).saturating_sub(label.height + margin),
            )
        };
        let (x, y) = (i64::from(x), i64::from(y));
        self.canvas
            .blend_mask(x + 1, y + 1, &label.mask, label.width, Yuv::BLACK)?;
        self.canvas
            .blend_mask(x, y, &label.mask, label.width, Yuv::from_rgb(255, 255, 255))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_picture_lands_in_its_tile() {
        let colours = [
            Yuv::from_rgb(230, 30, 30),
            Yuv::from_rgb(30, 200, 30),
            Yuv::from_rgb(30, 30, 230),
            Yuv::from_rgb(230, 230, 30),
        ];
        let pictures: Vec<Picture> = colours.iter().map(|&c| Picture::new(640, 360, c)).collect();
        let mut compositor = Compositor::new(1280, 720, Layout::parse("grid").unwrap());
        let tiles: Vec<TileView<'_>> = pictures
            .iter()
            .enumerate()
            .map(|(i, p)| TileView {
                picture: Some(p),
                name: "",
                speaking: i == 1,
                screen_share: false,
            })
            .collect();
        let canvas = compositor.compose(&tiles).unwrap().clone();
        // Tile centres of a 2×2 grid.
        let centres = [(320, 180), (960, 180), (320, 540), (960, 540)];
        for ((x, y), c) in centres.into_iter().zip(colours) {
            assert_eq!(canvas.at(x, y), c, "({x}, {y})");
        }
        // The speaker's border.
        assert_eq!(canvas.at(644, 4), SPEAKING);
    }

    #[test]
    fn a_tile_without_a_picture_shows_its_name() {
        let mut compositor = Compositor::new(640, 360, Layout::parse("grid").unwrap());
        let canvas = compositor
            .compose(&[TileView {
                picture: None,
                name: "Jeanne",
                speaking: false,
                screen_share: false,
            }])
            .unwrap()
            .clone();
        // White text pixels in the middle of the placeholder.
        let bright = (140..220)
            .flat_map(|y| (200..440).map(move |x| (x, y)))
            .filter(|&(x, y)| canvas.at(x, y).y > 200)
            .count();
        assert!(bright > 50, "{bright}");
        assert_eq!(canvas.at(20, 20), PLACEHOLDER);
    }
}
