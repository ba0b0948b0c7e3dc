"""Regenerates the JPEG decode fixtures of this directory with Pillow, from photographs in scikit-image's
data module: each source is cropped to 96 x 96 (odd sizes too), encoded with Pillow in several ways
(qualities, chroma subsampling, progressive, grayscale, CMYK) and the astronaut also in the other formats
ferry reads (PNG with alpha and with a palette, BMP, TIFF raw and LZW, WebP lossless and lossy, PPM, PGM;
and, written here, the Netpbm encodings Pillow reads but does not write: plain, 16-bit and bitmaps),
and what Pillow decodes from each file,
Image.open(f).convert("RGB"), is stored beside it as a PNG (lossless). The Go tests
(engine/data/decode_test.go) decode each JPEG with ferry and compare with Pillow's pixels.

    pip install pillow scikit-image numpy
    python generate.py
"""

import io
import os

import numpy
import PIL
from PIL import Image
from skimage import data

HERE = os.path.dirname(os.path.abspath(__file__))

# name: (photograph, top, left, height, width)
CROPS = {
    "astronaut": ("astronaut", 40, 180, 96, 96),
    "coffee": ("coffee", 100, 200, 96, 96),
    "chelsea": ("chelsea", 60, 120, 95, 101),
    "rocket": ("rocket", 150, 200, 96, 64),
}

# name: (format, mode, save options, file extension), for the astronaut crop
OTHER_FORMATS = {
    "png_rgba": ("PNG", "RGBA", {}, "png"),
    "png_palette": ("PNG", "P", {}, "png"),
    "bmp": ("BMP", "RGB", {}, "bmp"),
    "tiff_raw": ("TIFF", "RGB", {}, "tif"),
    "tiff_lzw": ("TIFF", "RGB", {"compression": "tiff_lzw"}, "tif"),
    "webp_lossless": ("WEBP", "RGB", {"lossless": True}, "webp"),
    "webp_lossy": ("WEBP", "RGB", {"quality": 90}, "webp"),
    "ppm": ("PPM", "RGB", {}, "ppm"),
    "pgm": ("PPM", "L", {}, "pgm"),
}

# variant: Pillow save options (mode is the image mode before saving)
VARIANTS = {
    "q90_420": dict(quality=90, subsampling=2),
    "q75_444": dict(quality=75, subsampling=0),
    "q95_422": dict(quality=95, subsampling=1),
    "progressive": dict(quality=85, progressive=True),
    "gray": dict(quality=90, mode="L"),
    "cmyk": dict(quality=90, mode="CMYK"),
}


def netpbm_variants(img):
    """The astronaut crop in the Netpbm encodings Pillow reads but does not all write: name -> file bytes.
    Plain (ASCII) files with comments in the header and between samples, odd maxima, 16-bit raw samples
    (big-endian), and bitmaps (a set bit is black)."""
    rgb = numpy.asarray(img.convert("RGB"), dtype=numpy.int64)
    gray = numpy.asarray(img.convert("L"), dtype=numpy.int64)
    h, w = gray.shape

    def plain(magic, maxval, values, per_line):
        lines = [f"{magic}\n# ferry test image\n{w} {h} # size\n" + (f"{maxval}\n" if maxval else "")]
        flat = [str(int(v)) for v in values.reshape(-1)]
        for i in range(0, len(flat), per_line):
            lines.append(" ".join(flat[i:i + per_line]) + ("  # row\n" if i % (4 * per_line) == 0 else "\n"))
        return "".join(lines).encode()

    def raw16(magic, maxval, values):
        return f"{magic}\n{w} {h}\n{maxval}\n".encode() + values.astype(">u2").tobytes()

    bits = (gray < 128).astype(numpy.uint8)  # 1 is black
    return {
        "pbm_plain.pbm": plain("P1", None, bits, 35),
        "pbm_raw.pbm": f"P4\n{w} {h}\n".encode() + numpy.packbits(bits, axis=1).tobytes(),
        "pgm_plain_max100.pgm": plain("P2", 100, gray * 100 // 255, 17),
        "ppm_plain_max1000.ppm": plain("P3", 1000, rgb * 1000 // 255, 12),
        "ppm_raw16_max4095.ppm": raw16("P6", 4095, rgb * 4095 // 255 + (rgb % 3)),
        "ppm_raw16_max65535.ppm": raw16("P6", 65535, rgb * 257 + (rgb % 7)),
        # Pillow reads gray above a maximum of 255 as 32-bit integers scaled to 65535, which convert("RGB")
        # clips to 255: values small against the maximum keep some range.
        "pgm_raw16_max65535.pgm": raw16("P5", 65535, gray + (gray % 5) * 40),
        "pgm_plain_max300.pgm": plain("P2", 300, gray // 85, 20),
    }


def main():
    for name, (photo, top, left, h, w) in CROPS.items():
        rgb = getattr(data, photo)()
        if rgb.ndim == 2:
            rgb = numpy.stack([rgb] * 3, axis=-1)
        img = Image.fromarray(numpy.ascontiguousarray(rgb[top:top + h, left:left + w, :3]))
        for variant, opts in VARIANTS.items():
            opts = dict(opts)
            mode = opts.pop("mode", "RGB")
            buf = io.BytesIO()
            img.convert(mode).save(buf, format="JPEG", **opts)
            jpeg = buf.getvalue()
            base = os.path.join(HERE, f"{name}_{variant}")
            with open(base + ".jpg", "wb") as f:
                f.write(jpeg)
            ref = Image.open(io.BytesIO(jpeg)).convert("RGB")
            ref.save(base + ".pillow.png", format="PNG")
        others = OTHER_FORMATS if name == "astronaut" else {}
        if name == "chelsea":  # odd sizes (95 x 101) through libwebp's chroma upsampling
            others = {"webp_lossy": OTHER_FORMATS["webp_lossy"]}
        for variant, (fmt, mode, opts, ext) in others.items():
            buf = io.BytesIO()
            img.convert(mode).save(buf, format=fmt, **opts)
            base = os.path.join(HERE, f"{name}_{variant}")
            with open(f"{base}.{ext}", "wb") as f:
                f.write(buf.getvalue())
            Image.open(io.BytesIO(buf.getvalue())).convert("RGB").save(base + ".pillow.png", format="PNG")
        if name == "astronaut":
            for variant, raw in netpbm_variants(img).items():
                base = os.path.join(HERE, f"{name}_{variant.rsplit('.', 1)[0]}")
                with open(os.path.join(HERE, f"{name}_{variant}"), "wb") as f:
                    f.write(raw)
                Image.open(io.BytesIO(raw)).convert("RGB").save(base + ".pillow.png", format="PNG")
    with open(os.path.join(HERE, "PILLOW_VERSION"), "w") as f:
        f.write(PIL.__version__ + "\n")


if __name__ == "__main__":
    main()
