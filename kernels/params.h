/*
 * The kernels' parameter blocks. Each kernel takes one of these structs by value. The engine packs the same
 * layout byte for byte (engine/layout_params.go); a test checks the sizes and offsets on both sides. Every
 * address is a 64-bit device address: device memory, or host memory mapped into the device's address
 * space (registered or page-locked host memory under unified addressing). Fields are only appended.
 */
#ifndef FERRY_KERNEL_PARAMS_H
#define FERRY_KERNEL_PARAMS_H

#include <stdint.h>

#define FERRY_MAX_CHANNELS 4

/* Output layouts of the image kernels. */
#define FERRY_LAYOUT_CHW 0
#define FERRY_LAYOUT_HWC 1

/*
 * ferry_image_{f32,f16,bf16}_{chw,hwc}: u8 images [batch, h, w, c] (HWC, as decoded; or [batch, c, h, w]
 * channel planes when planar is 1, as CIFAR stores them) to floating point,
 * out = x * scale[ch] + bias[ch] (normalization folded into one multiply-add), in CHW or HWC order, with an
 * optional horizontal flip per sample.
 */
typedef struct ferry_image_params {
    uint64_t src;     /* sample b starts at src + offsets[b], or at src + b*h*w*c when offsets is 0 */
    uint64_t offsets; /* uint64_t[batch] byte offsets, or 0 */
    uint64_t flip;    /* uint8_t[batch], nonzero flips sample b left-right; or 0 for no flips */
    uint64_t dst;     /* [batch, c, h, w] or [batch, h, w, c] of the output type */
    uint32_t batch, h, w, c; /* 1 <= c <= FERRY_MAX_CHANNELS */
    uint32_t planar;  /* 1: the input is [c, h, w] per sample; 0: [h, w, c] */
    /* Rows per block of the tiled path; 0 for the per-pixel path. The tiled path needs every sample's
       start 16-byte aligned, (w*c) % 16 == 0 (planar: w % 16 == 0), w a multiple of the outputs per 16
       bytes (4 for f32, else 8) and rows*w*c <= 16384. The grid is then one block per tile of `rows` rows
       of one sample. */
    uint32_t rows;
    float scale[FERRY_MAX_CHANNELS];
    float bias[FERRY_MAX_CHANNELS];
} ferry_image_params;

/*
 * ferry_tokens_{u16,u32,i32}: windows of seq+1 tokens to int64 inputs x = window[0:seq] and targets
 * y = window[1:seq+1]. With y == 0, the window is seq tokens and only x is written (widening). With mask,
 * a float32 loss mask: 0 where flags has FERRY_TOKENS_MASK_EOD and x is eod, 1 elsewhere. With pos and
 * without FERRY_TOKENS_RESET_POSITIONS, position ids 0..seq-1 (ferry_positions writes the reset ones).
 */
#define FERRY_TOKENS_MASK_EOD 1u
#define FERRY_TOKENS_RESET_POSITIONS 2u
typedef struct ferry_tokens_params {
    uint64_t src;     /* sample b starts at src + offsets[b], or at src + b*stride*token_size */
    uint64_t offsets; /* uint64_t[batch] byte offsets, or 0 */
    uint64_t x;       /* int64_t[batch, seq] */
    uint64_t y;       /* int64_t[batch, seq], or 0 */
    uint32_t batch, seq;
    uint32_t stride;  /* tokens between samples when offsets is 0 */
    uint32_t flags;   /* FERRY_TOKENS_* */
    uint64_t mask;    /* float[batch, seq], or 0 */
    uint64_t pos;     /* int64_t[batch, seq], or 0 */
    int64_t eod;      /* the end-of-document token */
} ferry_tokens_params;

/*
 * ferry_positions: position ids that restart after each end-of-document input token (Megatron's
 * reset_position_ids): pos[b, j] = j - (i + 1) for the last i < j with x[b, i] == eod, else j. One block
 * per sample (looping when the grid is smaller than the batch); x is the int64 inputs on the device.
 */
typedef struct ferry_positions_params {
    uint64_t x;   /* int64_t[batch, seq] */
    uint64_t pos; /* int64_t[batch, seq] */
    int64_t eod;
    uint32_t batch, seq;
} ferry_positions_params;

/* ferry_gather: copies batch samples of bytes each from src + offsets[b] to dst + b*bytes. */
typedef struct ferry_gather_params {
    uint64_t src;
    uint64_t offsets; /* uint64_t[batch] byte offsets (required) */
    uint64_t dst;
    uint64_t bytes;   /* per sample */
    uint32_t batch;
    uint32_t vec;     /* 1 when bytes, dst and every offset are multiples of 16 */
} ferry_gather_params;

/*
 * ferry_pad_{u16,u32}: variable-length token sequences to a padded int64 [batch, maxlen] matrix, an
 * attention mask (1 for a token, 0 for padding) and the lengths.
 */
typedef struct ferry_pad_params {
    uint64_t src;     /* sample b's tokens start at src + offsets[b] */
    uint64_t offsets; /* uint64_t[batch] byte offsets */
    uint64_t lengths; /* uint32_t[batch] tokens in each sample, each <= maxlen */
    uint64_t tokens;  /* int64_t[batch, maxlen] */
    uint64_t mask;    /* uint8_t[batch, maxlen], or 0 */
    uint64_t lengths_out; /* int64_t[batch], or 0 */
    int64_t pad_value;
    uint32_t batch, maxlen;
} ferry_pad_params;

/*
 * ferry_crop_{f32,f16,bf16}_{chw,hwc}: RandomResizedCrop and CenterCrop. Each sample is a decoded RGB image
 * (u8 [h, w, 3], rows 3*w bytes apart) at src + offset; output pixel (oy, ox) resamples the box: row
 * y0 + (oy + 0.5)*dy - 0.5 (clamped to [ylo, yhi]), column likewise (the column of size-1-ox when the sample
 * flips), bilinear, or, with antialias and a box larger than the output, the bilinear filter widened by the
 * scale factor. Then out = v * scale[ch] + bias[ch] in CHW or HWC order. The arithmetic follows the host
 * reference (engine/data/transform_crop.go) operation for operation, so the two agree to the output's
 * rounding. The grid is (blocks per sample, samples); blocks loop over samples beyond the grid.
 */
typedef struct ferry_crop_sample {
    uint64_t offset; /* the image's first byte, from src */
    uint32_t w, h;
    double y0, x0, dy, dx;
    int32_t ylo, yhi, xlo, xhi;
    uint32_t flip; /* nonzero: flip left-right */
    uint32_t reserved;
} ferry_crop_sample;

typedef struct ferry_crop_params {
    uint64_t samples; /* ferry_crop_sample[batch], device memory */
    uint64_t src;     /* the decoded images */
    uint64_t dst;     /* [batch, 3, size, size] or [batch, size, size, 3] of the output type */
    uint32_t batch, size;
    uint32_t antialias;
    uint32_t reserved;
    float scale[FERRY_MAX_CHANNELS];
    float bias[FERRY_MAX_CHANNELS];
} ferry_crop_params;

/*
 * ferry_ycc_rgb: JPEGs that nvJPEG decoded to planar Y, Cb, Cr (the chroma planes at their subsampled size)
 * to interleaved 8-bit RGB, as libjpeg makes it by default: "fancy" (triangle-filter) upsampling of 4:2:2
 * and 4:2:0 chroma, the edges replicated, then its integer YCbCr-to-RGB tables; gray images (gray != 0,
 * only Y) to R = G = B = Y. One image per grid row; blocks loop over images beyond the grid.
 */
typedef struct ferry_ycc_image {
    uint64_t y, cb, cr; /* the planes' device addresses */
    uint64_t dst;       /* u8 [h, w, 3] */
    uint32_t w, h;
    uint32_t cw, ch;    /* the chroma planes' size */
    uint32_t y_pitch, c_pitch;
    uint32_t hs, vs;    /* luma samples per chroma sample, across and down: 1 or 2 */
    uint32_t gray;
    uint32_t reserved;
} ferry_ycc_image;

typedef struct ferry_ycc_params {
    uint64_t images; /* ferry_ycc_image[batch], device memory */
    uint32_t batch;
    uint32_t reserved;
} ferry_ycc_params;

#endif
