"""Writes small image folders for the tests: scikit-learn's digits as image files."""
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits_folder(root, per_class: int = 12, size: int = 16, mode: str = "L",
                        classes: int = 10, jpeg: bool = True, corrupt: bool = True) -> Path:
    """root/<digit>/<i>.png: the first `per_class` digits of each class, upscaled to
    size x size (mode "L": grayscale, "RGB": the grey value in 3 channels, tinted); one
    JPEG and one corrupt .png among them when asked. Returns root."""
    root = Path(root)
    digits = load_digits()
    for label in range(classes):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        images = digits.images[digits.target == label][:per_class]
        for i, image in enumerate(images):
            pixels = np.round(image * 255 / 16).astype(np.uint8)
            picture = Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR)
            if mode == "RGB":
                grey = np.asarray(picture, np.float32)
                picture = Image.fromarray(np.stack([grey, grey * 0.8, grey * 0.6], -1)
                                          .astype(np.uint8), "RGB")
            suffix = ".jpg" if jpeg and label == 0 and i == 0 else ".png"
            picture.save(folder / f"{i:03d}{suffix}")
    if corrupt:
        (root / "1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


if __name__ == "__main__":  # python tests/image_folders.py DIR [PER_CLASS]: a sample folder
    import sys

    write_digits_folder(sys.argv[1], per_class=int(sys.argv[2]) if len(sys.argv) > 2 else 40,
                        size=32, corrupt=False)
