"""Make the example's dataset: 16x16 grey images of three shapes in the image-folder layout
(`<root>/train/<class>/*.png`, `<root>/test/<class>/*.png`), drawn with Pillow from a fixed
seed, so every run of this script writes the same files.

    python examples/byo/make_data.py            # -> data/byo_shapes
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 16
CLASSES = ("circle", "square", "triangle")


def draw(shape: str, rng: random.Random) -> Image.Image:
    image = Image.new("L", (SIZE, SIZE), color=rng.randint(0, 60))
    pen = ImageDraw.Draw(image)
    r = rng.randint(3, 6)
    cx, cy = rng.randint(r, SIZE - 1 - r), rng.randint(r, SIZE - 1 - r)
    ink = rng.randint(150, 255)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    for _ in range(6):  # a little noise
        image.putpixel((rng.randrange(SIZE), rng.randrange(SIZE)), rng.randint(0, 255))
    return image


def make(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    for split, count in per_class.items():
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(shape, rng).save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/byo_shapes"))
    parser.add_argument("--train", type=int, default=200, help="images per class (train)")
    parser.add_argument("--test", type=int, default=60, help="images per class (test)")
    args = parser.parse_args()
    make(args.root, {"train": args.train, "test": args.test})
    print(f"wrote {len(CLASSES) * (args.train + args.test)} images under {args.root}")


if __name__ == "__main__":
    main()
