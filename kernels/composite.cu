// Compositing kernels for room recordings, compiled at run time with NVRTC (parloir-gpu).
//
// Each kernel has a CPU reference in crates/parloir-media/src/picture.rs and must give the same
// bytes: the same integer arithmetic, in the same order. Planes are 8-bit, row-major, with a
// stride in bytes; rectangles are in samples of the plane they address (chroma rectangles are
// the luma ones halved, as the CPU code does). One thread per destination sample.

// Source position of destination sample i scaled from s samples to d samples, in 16.16 fixed
// point, sample centres aligned (picture.rs: scale_plane's `position`).
__device__ __forceinline__ long long position(unsigned i, unsigned s, unsigned d) {
    long long p = ((2LL * i + 1LL) * (long long)s * 65536LL) / (2LL * (long long)d) - 32768LL;
    return p < 0 ? 0 : p;
}

// Bilinear scaling of the source region (sx, sy, sw, sh) into the destination region
// (dx, dy, dw, dh). `src_step` is 1 for a planar source and 2 for the U or V samples of an NV12
// chroma plane (NVDEC's output), which `src` then points into.
extern "C" __global__ void scale_plane(
    unsigned char* dst, unsigned dst_stride, unsigned dx, unsigned dy, unsigned dw, unsigned dh,
    const unsigned char* src, unsigned src_stride, unsigned src_step,
    unsigned sx, unsigned sy, unsigned sw, unsigned sh) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned j = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= dw || j >= dh || sw == 0 || sh == 0) return;
    long long px = position(i, sw, dw);
    unsigned x0 = (unsigned)(px >> 16); if (x0 > sw - 1) x0 = sw - 1;
    unsigned x1 = x0 + 1 > sw - 1 ? sw - 1 : x0 + 1;
    unsigned wx = (unsigned)((px >> 8) & 0xff);
    long long py = position(j, sh, dh);
    unsigned y0 = (unsigned)(py >> 16); if (y0 > sh - 1) y0 = sh - 1;
    unsigned y1 = y0 + 1 > sh - 1 ? sh - 1 : y0 + 1;
    unsigned wy = (unsigned)((py >> 8) & 0xff);
    const unsigned char* r0 = src + (size_t)(sy + y0) * src_stride;
    const unsigned char* r1 = src + (size_t)(sy + y1) * src_stride;
    unsigned a = (sx + x0) * src_step, b = (sx + x1) * src_step;
    unsigned upper = (r0[a] * (256 - wx) + r0[b] * wx + 128) >> 8;
    unsigned lower = (r1[a] * (256 - wx) + r1[b] * wx + 128) >> 8;
    dst[(size_t)(dy + j) * dst_stride + dx + i] =
        (unsigned char)((upper * (256 - wy) + lower * wy + 128) >> 8);
}

// Fills a region with one value (backgrounds, placeholders, borders).
extern "C" __global__ void fill_plane(
    unsigned char* dst, unsigned stride, unsigned x, unsigned y, unsigned w, unsigned h,
    unsigned char value) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned j = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= w || j >= h) return;
    dst[(size_t)(y + j) * stride + x + i] = value;
}

__device__ __forceinline__ unsigned char mix(unsigned char under, unsigned char over, unsigned a) {
    return (unsigned char)((under * (255 - a) + over * a + 127) / 255);
}

// Blends a coverage mask (text rasterised on the CPU) of one colour onto a luma plane, the
// mask's top-left at (x, y), which may lie outside the plane (clipped).
extern "C" __global__ void blend_mask_luma(
    unsigned char* dst, unsigned stride, unsigned width, unsigned height,
    const unsigned char* mask, unsigned mask_w, unsigned mask_h, int x, int y,
    unsigned char value) {
    unsigned mx = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned my = blockIdx.y * blockDim.y + threadIdx.y;
    if (mx >= mask_w || my >= mask_h) return;
    long long px = (long long)x + mx, py = (long long)y + my;
    if (px < 0 || py < 0 || px >= width || py >= height) return;
    unsigned a = mask[(size_t)my * mask_w + mx];
    if (a == 0) return;
    unsigned char* d = dst + (size_t)py * stride + px;
    *d = mix(*d, value, a);
}

// The chroma half of blend_mask: one chroma sample per 2x2 block, from the mask sample at the
// block's top-left luma position (picture.rs: blend_mask).
extern "C" __global__ void blend_mask_chroma(
    unsigned char* u, unsigned char* v, unsigned stride, unsigned chroma_w, unsigned chroma_h,
    const unsigned char* mask, unsigned mask_w, unsigned mask_h, int x, int y,
    unsigned char u_value, unsigned char v_value, unsigned luma_w, unsigned luma_h) {
    unsigned mx = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned my = blockIdx.y * blockDim.y + threadIdx.y;
    if (mx >= mask_w || my >= mask_h) return;
    long long px = (long long)x + mx, py = (long long)y + my;
    if (px < 0 || py < 0 || px >= luma_w || py >= luma_h) return;
    if ((px & 1) || (py & 1)) return;
    long long cx = px / 2, cy = py / 2;
    if (cx >= chroma_w || cy >= chroma_h) return;
    unsigned a = mask[(size_t)my * mask_w + mx];
    if (a == 0) return;
    size_t c = (size_t)cy * stride + cx;
    u[c] = mix(u[c], u_value, a);
    v[c] = mix(v[c], v_value, a);
}
