"""Gather the still photographs the default tokenizer trains on: `python scripts/get_photos.py OUT_DIR [--short-side N]`.

Every image listed in scripts/training_photos.tsv: desktop backgrounds from Debian packages (`apt-get download`
then `dpkg -x`; nothing is installed) and the images bundled in the scikit-image wheel. OUT_DIR gets one file
per image, named `{package}__{name}`; the packages' copyright files go to OUT_DIR/licences/. Licences are
summarized in docs/model.md. Needs apt-get and dpkg (Debian, Ubuntu) and, for the skimage rows, scikit-image.
`--short-side N` stores each image scaled down to short side N as JPEG (Pillow): a few MB in all, small enough
to carry to a lent GPU machine (training stores photos at short side 160 anyway).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LIST = Path(__file__).resolve().with_name("training_photos.tsv")


def read_list() -> dict[str, list[str]]:
    """package -> paths inside it, in file order."""
    rows: dict[str, list[str]] = {}
    for line in LIST.read_text().splitlines():
        if line and not line.startswith("#"):
            package, path = line.split("\t")
            rows.setdefault(package, []).append(path)
    return rows


def target_name(package: str, path: str) -> str:
    """`{package}__{name}`; KDE wallpapers keep their folder's name (their files are all called e.g. 1920x1080.jpg)."""
    parts = path.split("/")
    if "wallpapers" in parts[:-1] and package.startswith("plasma"):
        return f"{package}__{parts[parts.index('wallpapers') + 1]}{Path(path).suffix}"
    return f"{package}__{parts[-1]}"


def shrink(path: Path, short_side: int) -> None:
    """Replace the image at `path` by a JPEG of short side `short_side` (never enlarged) named `{stem}.jpg`."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = min(1.0, short_side / min(image.size))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        image.save(path.with_suffix(".jpg"), quality=92)
    if path.suffix.lower() != ".jpg":
        path.unlink()


def main(out: Path, short_side: int | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "licences").mkdir(exist_ok=True)
    count = 0
    for package, paths in read_list().items():
        if package == "skimage":
            import skimage

            root = Path(skimage.__file__).parent / "data"
            for p in paths:
                shutil.copyfile(root / p, out / target_name(package, p))
                count += 1
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
            for p in paths:
                shutil.copyfile(Path(tmp) / "x" / p, out / target_name(package, p))
                count += 1
            copyright_file = Path(tmp) / "x" / "usr" / "share" / "doc" / package / "copyright"
            if copyright_file.is_file():
                shutil.copyfile(copyright_file, out / "licences" / f"{package}.copyright")
    if short_side:
        for path in sorted(p for p in out.iterdir() if p.is_file()):
            shrink(path, short_side)
    print(f"{count} images in {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the images (and licences/)")
    parser.add_argument("--short-side", type=int, help="store JPEGs scaled down to this short side")
    args = parser.parse_args()
    sys.exit(main(args.out, args.short_side))
