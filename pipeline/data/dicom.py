"""DICOM photos, as fundus cameras export them: their pixels, and nothing else.

A DICOM header names the patient (name, id, birth date, ...) beside the photo. Only the tags that
describe the pixel data are ever read from a file (pydicom's ``specific_tags``): the others are
skipped unread, so no identifier can reach a log, an error message, a manifest or a model.

Read: 8-bit ophthalmic photography, RGB or YBR (full, 4:2:2) colour or MONOCHROME2 grey, one
frame, uncompressed or JPEG-baseline compressed (decoded through Pillow).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from pipeline.errors import DataError

# A DICOM file: a 128-byte preamble, then these four bytes.
MAGIC_OFFSET = 128
MAGIC = b"DICM"
# The only tags read: how the pixels are laid out, and the pixels.
PIXEL_TAGS = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows",
              "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData")
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422")
GREY_INTERPRETATIONS = ("MONOCHROME2",)


def is_dicom(head: bytes) -> bool:
    """Whether a file starting with ``head`` (at least 132 bytes) is DICOM."""
    return head[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def read_dicom(source: Path | bytes, name: str) -> Image.Image:
    """The photo of a DICOM file (a path or its bytes) as an RGB or L image.

    Raises:
        DataError: naming ``name`` (the file, or "the photo") when the file holds no photo this
            reads; the message carries pixel-layout values only.
    """
    try:
        dataset = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source,
                                  specific_tags=list(PIXEL_TAGS))
    except Exception as exc:  # pydicom raises many kinds for a broken file
        raise DataError(f"{name} is a DICOM file that cannot be read: {type(exc).__name__}") from None
    if "PixelData" not in dataset:
        raise DataError(f"{name} is a DICOM file without pixel data")
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if interpretation not in COLOUR_INTERPRETATIONS + GREY_INTERPRETATIONS:
        raise DataError(f"{name} is a DICOM photo with photometric interpretation {interpretation!r}; "
                        f"read are {', '.join(COLOUR_INTERPRETATIONS + GREY_INTERPRETATIONS)}")
    if int(dataset.get("BitsAllocated", 0)) != 8:
        raise DataError(f"{name} is a DICOM photo of {dataset.get('BitsAllocated')} bits per sample; "
                        "only 8-bit photos are read")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise DataError(f"{name} is a DICOM file of {dataset.get('NumberOfFrames')} frames; "
                        "export one photo per file")
    try:
        # pydicom converts YBR to RGB (its default), in the file and in a JPEG's own decoding.
        pixels = dataset.pixel_array
    except Exception as exc:
        raise DataError(f"{name} is a DICOM photo whose pixels cannot be decoded: {exc}") from None
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
