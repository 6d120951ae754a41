"""Synthetic saturated-colour stills for training: `python scripts/make_colour_fields.py OUT [--count 150]`.

Real footage rarely holds fully saturated colour, so a tokenizer trained on it washes such colour out (the
rainbow gradient sample comes back pink and blue). These PNGs, passed to `train_tokenizer.py --photos`, are
three kinds in turn: hue gradients at a random angle, smooth random colour fields (a few control points
upsampled bicubically), and flat patches of random colours (nearest of a few random centres). Deterministic
for a given --seed; our own, no licence needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

app = typer.Typer(add_completion=False)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Arrays of hue [0, 1), saturation, value -> (..., 3) uint8 RGB."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    h = (rng.uniform() + ramp * rng.uniform(0.3, 1.5)) % 1.0
    return hsv_to_rgb(h, np.full_like(h, rng.uniform(0.6, 1.0)), np.full_like(h, rng.uniform(0.5, 1.0)))


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    points = int(rng.integers(2, 7))
    hsv = np.stack([rng.uniform(0, 1, (points, points)), rng.uniform(0.5, 1, (points, points)), rng.uniform(0.3, 1, (points, points))], -1)
    small = Image.fromarray(hsv_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2]))
    return np.asarray(small.resize((size, size), Image.BICUBIC))


def patches(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(3, 12))
    centres = rng.uniform(0, size, (n, 2))
    colours = hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.4, 1, n), rng.uniform(0.3, 1, n))
    y, x = np.mgrid[0:size, 0:size]
    nearest = np.argmin((y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2, axis=-1)
    return colours[nearest]


@app.command()
def main(
    out: Annotated[Path, typer.Argument(help="folder for the PNGs")],
    count: Annotated[int, typer.Option(help="number of images")] = 150,
    size: Annotated[int, typer.Option(help="side in pixels")] = 320,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = (gradient, smooth_field, patches)
    for i in range(count):
        Image.fromarray(kinds[i % len(kinds)](rng, size)).save(out / f"colour_{i:04d}.png")
    print(f"{count} images in {out}")


if __name__ == "__main__":
    app()
