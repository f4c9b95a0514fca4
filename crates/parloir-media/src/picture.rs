//! Planar YUV 4:2:0 pictures (I420, tightly packed) and the CPU pixel work on them: bilinear
//! scaling of a source region into a destination rectangle, fills and borders. These are the
//! CPU reference versions of the compositing kernels (kernels/): the GPU path must match them.

/// A rectangle in pixels, `x`/`y` its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// The same rectangle moved to even coordinates and sizes, so that its chroma samples line
    /// up with its luma ones in 4:2:0.
    pub fn even(self) -> Self {
        let x = self.x & !1;
        let y = self.y & !1;
        let right = (self.x + self.width) & !1;
        let bottom = (self.y + self.height) & !1;
        Self::new(x, y, right.saturating_sub(x), bottom.saturating_sub(y))
    }

    /// The largest centred part of a `width`×`height` picture with this rectangle's aspect
    /// ratio (what "cover" shows: the picture fills the rectangle, its excess cropped).
    pub fn cover_crop(self, width: u32, height: u32) -> Rect {
        if self.width == 0 || self.height == 0 || width == 0 || height == 0 {
            return Rect::new(0, 0, width, height);
        }
        // Compare width/height with self.width/self.height without floats.
        let (w, h) = (u64::from(width), u64::from(height));
        let (tw, th) = (u64::from(self.width), u64::from(self.height));
        if w * th > tw * h {
            let cw = (h * tw / th).max(1) as u32;
            Rect::new((width - cw) / 2, 0, cw, height)
        } else {
            let ch = (w * th / tw).max(1) as u32;
            Rect::new(0, (height - ch) / 2, width, ch)
        }
    }

    /// The largest centred rectangle inside this one with the aspect ratio of a
    /// `width`×`height` picture (what "contain" shows: all of it, with bars around).
    pub fn contain(self, width: u32, height: u32) -> Rect {
        if self.width == 0 || self.height == 0 || width == 0 || height == 0 {
            return self;
        }
        let (w, h) = (u64::from(width), u64::from(height));
        let (tw, th) = (u64::from(self.width), u64::from(self.height));
        if w * th > tw * h {
            let fh = (tw * h / w).max(1) as u32;
            Rect::new(self.x, self.y + (self.height - fh) / 2, self.width, fh)
        } else {
            let fw = (th * w / h).max(1) as u32;
            Rect::new(self.x + (self.width - fw) / 2, self.y, fw, self.height)
        }
    }
}

/// A colour in limited-range BT.601 YUV, as the encoders take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv {
    pub y: u8,
    pub u: u8,
    pub v: u8,
}

impl Yuv {
    pub const BLACK: Yuv = Yuv {
        y: 16,
        u: 128,
        v: 128,
    };

    /// Converts 8-bit sRGB (BT.601, limited range, integer arithmetic as libswscale does).
    pub fn from_rgb(r: u8, g: u8, b: u8) -> Yuv {
        let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
        let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
        let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
        let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
        Yuv {
            y: y.clamp(0, 255) as u8,
            u: u.clamp(0, 255) as u8,
            v: v.clamp(0, 255) as u8,
        }
    }

    /// Back to sRGB (for checks and tests).
    pub fn to_rgb(self) -> (u8, u8, u8) {
        let c = i32::from(self.y) - 16;
        let d = i32::from(self.u) - 128;
        let e = i32::from(self.v) - 128;
        let r = (298 * c + 409 * e + 128) >> 8;
        let g = (298 * c - 100 * d - 208 * e + 128) >> 8;
        let b = (298 * c + 516 * d + 128) >> 8;
        (
            r.clamp(0, 255) as u8,
            g.clamp(0, 255) as u8,
            b.clamp(0, 255) as u8,
        )
    }
}

/// An I420 picture: a full-size luma plane then two half-size chroma planes, each row packed
/// (stride = plane width).
#[derive(Clone, PartialEq, Eq)]
pub struct Picture {
    width: u32,
    height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Picture({}x{})", self.width, self.height)
    }
}

impl Picture {
    /// A picture filled with `colour`.
    pub fn new(width: u32, height: u32, colour: Yuv) -> Picture {
        let (cw, ch) = chroma_size(width, height);
        Picture {
            width,
            height,
            y: vec![colour.y; (width * height) as usize],
            u: vec![colour.u; (cw * ch) as usize],
            v: vec![colour.v; (cw * ch) as usize],
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn chroma_width(&self) -> u32 {
        chroma_size(self.width, self.height).0
    }

    pub fn chroma_height(&self) -> u32 {
        chroma_size(self.width, self.height).1
    }

    /// The colour at a pixel (luma there, chroma of its 2×2 block).
    pub fn at(&self, x: u32, y: u32) -> Yuv {
        let cw = self.chroma_width();
        let c = ((y / 2) * cw + x / 2) as usize;
        Yuv {
            y: self.y[(y * self.width + x) as usize],
            u: self.u[c],
            v: self.v[c],
        }
    }

    /// The mean colour of a rectangle (clipped to the picture).
    pub fn mean(&self, r: Rect) -> Yuv {
        let x1 = (r.x + r.width).min(self.width);
        let y1 = (r.y + r.height).min(self.height);
        let (mut sy, mut su, mut sv, mut n) = (0u64, 0u64, 0u64, 0u64);
        for y in r.y..y1 {
            for x in r.x..x1 {
                let c = self.at(x, y);
                sy += u64::from(c.y);
                su += u64::from(c.u);
                sv += u64::from(c.v);
                n += 1;
            }
        }
        if n == 0 {
            return Yuv::BLACK;
        }
        Yuv {
            y: (sy / n) as u8,
            u: (su / n) as u8,
            v: (sv / n) as u8,
        }
    }

    /// Fills a rectangle (clipped to the picture, moved to even coordinates).
    pub fn fill(&mut self, r: Rect, colour: Yuv) {
        let r = self.clip(r).even();
        for y in r.y..r.y + r.height {
            let row = (y * self.width) as usize;
            self.y[row + r.x as usize..row + (r.x + r.width) as usize].fill(colour.y);
        }
        let cw = self.chroma_width();
        for y in r.y / 2..(r.y + r.height) / 2 {
            let row = (y * cw) as usize;
            let (a, b) = (
                row + (r.x / 2) as usize,
                row + ((r.x + r.width) / 2) as usize,
            );
            self.u[a..b].fill(colour.u);
            self.v[a..b].fill(colour.v);
        }
    }

    /// Draws a frame of `thickness` pixels just inside a rectangle.
    pub fn border(&mut self, r: Rect, thickness: u32, colour: Yuv) {
        let r = self.clip(r).even();
        let t = (thickness.max(2) + 1) & !1;
        if r.width <= 2 * t || r.height <= 2 * t {
            self.fill(r, colour);
            return;
        }
        self.fill(Rect::new(r.x, r.y, r.width, t), colour);
        self.fill(Rect::new(r.x, r.y + r.height - t, r.width, t), colour);
        self.fill(Rect::new(r.x, r.y, t, r.height), colour);
        self.fill(Rect::new(r.x + r.width - t, r.y, t, r.height), colour);
    }

    /// Scales the `src_rect` part of `src` into `dst` of this picture (bilinear, 16.16 fixed
    /// point; both rectangles clipped and moved to even coordinates).
    pub fn blit(&mut self, dst: Rect, src: &Picture, src_rect: Rect) {
        let dst = self.clip(dst).even();
        let src_rect = src.clip(src_rect).even();
        if dst.width == 0 || dst.height == 0 || src_rect.width == 0 || src_rect.height == 0 {
            return;
        }
        let (dw, sw) = (self.width, src.width);
        scale_plane(&mut self.y, dw, dst, &src.y, sw, src_rect);
        let half = |r: Rect| Rect::new(r.x / 2, r.y / 2, r.width / 2, r.height / 2);
        let (dcw, scw) = (self.chroma_width(), src.chroma_width());
        scale_plane(&mut self.u, dcw, half(dst), &src.u, scw, half(src_rect));
        scale_plane(&mut self.v, dcw, half(dst), &src.v, scw, half(src_rect));
    }

    /// Blends a one-channel coverage mask (0 = transparent, 255 = opaque) of `colour` with
    /// its top-left corner at (`x`, `y`): how rasterised text goes onto the canvas.
    pub fn blend_mask(&mut self, x: i64, y: i64, mask: &[u8], mask_width: u32, colour: Yuv) {
        if mask_width == 0 {
            return;
        }
        let mask_height = (mask.len() / mask_width as usize) as u32;
        let cw = self.chroma_width() as i64;
        let ch = self.chroma_height() as i64;
        for my in 0..mask_height {
            let py = y + i64::from(my);
            if py < 0 || py >= i64::from(self.height) {
                continue;
            }
            for mx in 0..mask_width {
                let px = x + i64::from(mx);
                if px < 0 || px >= i64::from(self.width) {
                    continue;
                }
                let a = u32::from(mask[(my * mask_width + mx) as usize]);
                if a == 0 {
                    continue;
                }
                let i = (py * i64::from(self.width) + px) as usize;
                self.y[i] = mix(self.y[i], colour.y, a);
                // Chroma once per 2×2 block, from its top-left sample.
                if px % 2 == 0 && py % 2 == 0 && px / 2 < cw && py / 2 < ch {
                    let c = ((py / 2) * cw + px / 2) as usize;
                    self.u[c] = mix(self.u[c], colour.u, a);
                    self.v[c] = mix(self.v[c], colour.v, a);
                }
            }
        }
    }

    fn clip(&self, r: Rect) -> Rect {
        clip(self.width, self.height, r)
    }
}

/// `r` cut to a `width`×`height` picture.
pub(crate) fn clip(width: u32, height: u32, r: Rect) -> Rect {
    let x = r.x.min(width);
    let y = r.y.min(height);
    Rect::new(x, y, r.width.min(width - x), r.height.min(height - y))
}

fn mix(under: u8, over: u8, alpha: u32) -> u8 {
    ((u32::from(under) * (255 - alpha) + u32::from(over) * alpha + 127) / 255) as u8
}

fn chroma_size(width: u32, height: u32) -> (u32, u32) {
    (width.div_ceil(2), height.div_ceil(2))
}

/// Bilinear scaling of one plane's `sr` region into its `dr` region (sample centres aligned,
/// as libswscale's bilinear does). Per destination row: two source rows, blended in 8-bit
/// fixed point; per destination column a precomputed source index and weight.
fn scale_plane(dst: &mut [u8], dst_stride: u32, dr: Rect, src: &[u8], src_stride: u32, sr: Rect) {
    if dr.width == 0 || dr.height == 0 || sr.width == 0 || sr.height == 0 {
        return;
    }
    // Source position of destination sample i: (i + 0.5) * s / d - 0.5, in 16.16.
    let position = |i: u32, s: u32, d: u32| -> i64 {
        ((2 * i64::from(i) + 1) * i64::from(s) * 65536 / (2 * i64::from(d)) - 32768).max(0)
    };
    let columns: Vec<(usize, usize, u32)> = (0..dr.width)
        .map(|i| {
            let p = position(i, sr.width, dr.width);
            let x0 = ((p >> 16) as u32).min(sr.width - 1);
            let x1 = (x0 + 1).min(sr.width - 1);
            let w = ((p >> 8) & 0xff) as u32;
            ((sr.x + x0) as usize, (sr.x + x1) as usize, w)
        })
        .collect();
    let mut upper = vec![0u8; dr.width as usize];
    let mut lower = vec![0u8; dr.width as usize];
    for j in 0..dr.height {
        let p = position(j, sr.height, dr.height);
        let y0 = ((p >> 16) as u32).min(sr.height - 1);
        let y1 = (y0 + 1).min(sr.height - 1);
        let wy = ((p >> 8) & 0xff) as u32;
        let r0 = ((sr.y + y0) * src_stride) as usize;
        let r1 = ((sr.y + y1) * src_stride) as usize;
        for (k, &(a, b, wx)) in columns.iter().enumerate() {
            let h = |row: usize| {
                (u32::from(src[row + a]) * (256 - wx) + u32::from(src[row + b]) * wx + 128) >> 8
            };
            upper[k] = h(r0) as u8;
            lower[k] = h(r1) as u8;
        }
        let out = ((dr.y + j) * dst_stride + dr.x) as usize;
        for (k, d) in dst[out..out + dr.width as usize].iter_mut().enumerate() {
            *d = ((u32::from(upper[k]) * (256 - wy) + u32::from(lower[k]) * wy + 128) >> 8) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_go_to_yuv_and_back() {
        for (r, g, b) in [
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
            (255, 255, 255),
            (20, 200, 90),
        ] {
            let (r2, g2, b2) = Yuv::from_rgb(r, g, b).to_rgb();
            for (a, b) in [(r, r2), (g, g2), (b, b2)] {
                assert!((i32::from(a) - i32::from(b)).abs() <= 3, "{r},{g},{b}");
            }
        }
    }

    #[test]
    fn blit_scales_and_places_a_picture() {
        let red = Yuv::from_rgb(255, 0, 0);
        let mut canvas = Picture::new(64, 48, Yuv::BLACK);
        let src = Picture::new(32, 32, red);
        canvas.blit(Rect::new(10, 8, 20, 16), &src, Rect::new(0, 0, 32, 32));
        assert_eq!(canvas.at(11, 9), red);
        assert_eq!(canvas.at(28, 22), red);
        assert_eq!(canvas.at(30, 8), Yuv::BLACK, "right of the tile");
        assert_eq!(canvas.at(10, 24), Yuv::BLACK, "below the tile");
        assert_eq!(canvas.at(9, 9), Yuv::BLACK, "left of the tile");
    }

    #[test]
    fn blit_keeps_a_gradient_in_order() {
        // A horizontal luma ramp scaled down and up stays a ramp.
        let mut src = Picture::new(256, 4, Yuv::BLACK);
        for y in 0..4 {
            for x in 0..256 {
                src.y[(y * 256 + x) as usize] = x as u8;
            }
        }
        for width in [64, 100, 512] {
            let mut dst = Picture::new(width, 4, Yuv::BLACK);
            dst.blit(Rect::new(0, 0, width, 4), &src, Rect::new(0, 0, 256, 4));
            let row = &dst.y[..width as usize];
            assert!(row.windows(2).all(|w| w[0] <= w[1]), "{width}: {row:?}");
            assert!(row[0] < 4 && row[width as usize - 1] > 251, "{width}");
        }
    }

    #[test]
    fn cover_and_contain_keep_the_aspect_ratio() {
        let tile = Rect::new(100, 50, 320, 180);
        // A 4:3 camera in a 16:9 tile: cover crops top and bottom.
        assert_eq!(tile.cover_crop(640, 480), Rect::new(0, 60, 640, 360));
        // A portrait phone: contain leaves bars at the sides.
        assert_eq!(tile.contain(360, 640), Rect::new(209, 50, 101, 180));
        assert_eq!(tile.contain(1280, 720), tile);
    }

    #[test]
    fn a_mask_blends_over_the_picture() {
        let white = Yuv::from_rgb(255, 255, 255);
        let mut p = Picture::new(8, 8, Yuv::BLACK);
        p.blend_mask(0, 2, &[255, 255, 128, 0], 2, white);
        assert_eq!(p.at(0, 2).y, white.y);
        assert_eq!(p.at(1, 2).y, white.y);
        // Half coverage: half way from black (16) to white (235).
        assert_eq!(p.at(0, 3).y, 126);
        assert_eq!(p.at(1, 3).y, 16);
        // Clipped at the edges, not wrapped.
        p.blend_mask(-1, 6, &[255, 0], 2, white);
        assert_eq!(p.at(7, 5).y, 16);
    }

    #[test]
    fn fill_and_border_stay_inside() {
        let c = Yuv::from_rgb(0, 255, 0);
        let mut p = Picture::new(20, 20, Yuv::BLACK);
        p.border(Rect::new(2, 2, 16, 16), 2, c);
        assert_eq!(p.at(2, 2), c);
        assert_eq!(p.at(17, 17), c);
        assert_eq!(p.at(10, 10), Yuv::BLACK);
        assert_eq!(p.at(1, 1), Yuv::BLACK);
        p.fill(Rect::new(15, 15, 100, 100), c);
        assert_eq!(p.at(19, 19), c);
    }
}
