"""JPEGs of ImageNet-like sizes for the image benchmarks: smooth random content with noise, quality 90."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def write_jpeg(job: Any) -> int:
    """Writes the JPEG of job = (path, seed): 400-640 x 300-500 pixels; returns its size in bytes."""
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(400, 640)), int(rng.integers(300, 500))
    small = rng.integers(0, 256, size=(h // 16, w // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    noise = rng.integers(-12, 13, size=(h, w, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return os.path.getsize(path)
