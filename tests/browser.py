"""A real headless Chromium (Debian's `chromium`) opening a file offline: its screenshot and its DOM."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kernel_util import unavailable


def render(page: Path, work: Path, size: tuple[int, int] = (1280, 2600)):
    """(PIL image of the screenshot, the DOM as the browser parsed it) of `page`, with every host
    name resolving to nothing (a page that needed the network renders without it)."""
    from PIL import Image

    browser = shutil.which("chromium")
    if browser is None:
        unavailable("Debian's chromium is not installed (scripts/setup.sh installs it)")
    shot = work / (page.stem + ".png")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={work / 'chromium-profile'}", "--host-resolver-rules=MAP * ~NOTFOUND"]
    res = subprocess.run(flags + [f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return Image.open(shot), dom.stdout


def colour_count(img, rgb: str, tol: int = 24) -> int:
    """Pixels of the image within `tol` of the colour "#rrggbb"."""
    import numpy as np

    want = np.array([int(rgb[k:k + 2], 16) for k in (1, 3, 5)])
    px = np.asarray(img.convert("RGB")).astype(int)
    return int((np.abs(px - want).max(axis=2) <= tol).sum())
