"""What the figure tests share: checks that a PNG is real and that no temporary file is left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def assert_png(path: Path, min_w: int = 200, min_h: int = 150) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        assert w >= min_w and h >= min_h, (path.name, img.size)
        pixels = np.asarray(img.convert("L"))
        assert pixels.std() > 1.0, f"{path.name} is blank"
    return w, h


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*")
            if p.name.startswith(".") or p.name.endswith(".tmp")]
