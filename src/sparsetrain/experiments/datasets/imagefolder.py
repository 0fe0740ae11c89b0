"""Image folders: ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), read with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...errors import InputError
from .memory import Split, make_split

__all__ = ["load_imagefolder"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_imagefolder(root: str | os.PathLike | None, image_size: int | None = None,
                     grayscale: bool = False) -> Split:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*`` (or ``val/``), read with Pillow."""
    if root is None:
        raise FileNotFoundError("imagefolder needs a root directory: --data-root DIR with DIR/train/<class>/... "
                                "and DIR/test/<class>/... (or DIR/val/...)")
    base = Path(root).expanduser()
    train_dir = base / "train"
    test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise FileNotFoundError(f"imagefolder: expected {train_dir}/<class>/... and {base}/test (or val)/<class>/...")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("imagefolder needs Pillow: pip install 'sparsetrain[images]' (or pillow)") from e
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"imagefolder: no class directories in {train_dir}")
    index = {c: i for i, c in enumerate(classes)}

    def read(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c in sorted(d.name for d in split_dir.iterdir() if d.is_dir()):
            if c not in index:
                raise InputError(f"imagefolder: class {c!r} in {split_dir} is not among the training classes")
            for f in sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
                with Image.open(f) as im:
                    im = im.convert("L" if grayscale else "RGB")
                    if image_size is not None:
                        im = im.resize((image_size, image_size), Image.BILINEAR)
                    w, h = im.size
                    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                    t = t.view(h, w, -1).permute(2, 0, 1).contiguous()
                if images and t.shape != images[0].shape:
                    raise InputError(f"imagefolder: {f} is {tuple(t.shape)}, others {tuple(images[0].shape)}; "
                                     "pass image_size=N to resize every image")
                images.append(t)
                labels.append(index[c])
        if not images:
            raise InputError(f"imagefolder: no images in {split_dir}")
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)

    train_x, train_y = read(train_dir)
    test_x, test_y = read(test_dir)
    if test_x.shape[1:] != train_x.shape[1:]:
        raise InputError("imagefolder: train and test images differ in size; pass image_size=N")
    return make_split("imagefolder", train_x, train_y, test_x, test_y, num_classes=len(classes), classes=classes)
