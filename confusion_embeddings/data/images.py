"""Decoding one picture: PIL, a fixed set of formats, a size limit, RGB uint8 out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from confusion_embeddings.core.errors import PipelineError, first_line

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Formats PIL may parse; a file named .jpg that is really some exotic format is refused
# rather than handed to a rarely used decoder (camera MPO files open through JPEG).
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
# A safety limit, not a knob: a small PNG can claim billions of pixels (a decompression
# bomb); anything above this is refused from its header, before it is decoded.
MAX_PIXELS = 4096 * 4096


def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """Decode one picture to uint8 RGB [H, W, 3], resized when image_size is set."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise PipelineError(
                    f"{where}: image claims {w}x{h} pixels, above the limit of {MAX_PIXELS} "
                    "(possible decompression bomb); remove it or shrink it"
                )
            img.load()  # force the full decode, so that truncated files fail here
            if img.mode != "RGB":
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except PipelineError:
        raise
    except UnidentifiedImageError:
        raise PipelineError(
            f"{where}: not a readable image (no {', '.join(PIL_FORMATS)} data); "
            "replace or delete the file"
        ) from None
    except Image.DecompressionBombError as exc:
        raise PipelineError(
            f"{where}: image too large ({exc}); possible decompression bomb, remove it"
        ) from None
    except Exception as exc:  # any decoder failure means a bad file the user must replace
        detail = first_line(exc)
        raise PipelineError(
            f"{where}: not a readable image ({type(exc).__name__}: {detail}); "
            "replace or delete the file"
        ) from None
