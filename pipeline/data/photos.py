"""Photo files as clinics have them: which files are photos, finding an id's photo, and decoding one.

An id's photo is ``<id>.<ext>`` for an extension of ``PHOTO_EXTENSIONS`` in any case; what a file
holds is read from its content, so PNG bytes behind a ``.jpeg`` name and DICOM bytes posted to
the served model decode as what they are.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.data.dicom import MAGIC, MAGIC_OFFSET, is_dicom, read_dicom
from pipeline.errors import DataError

PHOTO_EXTENSIONS = ("jpeg", "jpg", "png", "tif", "tiff", "bmp", "dcm")

# A photo as a file, or as the bytes of one (a photo posted to the served model).
PhotoSource = Path | bytes


def describe(source: PhotoSource) -> str:
    """How messages name a photo: its file, or "the photo" for posted bytes."""
    return f"image {source}" if isinstance(source, Path) else "the photo"


def is_photo_file(path: Path) -> bool:
    return path.suffix[1:].lower() in PHOTO_EXTENSIONS


class PhotoFolder:
    """The photos of one folder by id: ``<id>.<ext>`` for each extension of ``PHOTO_EXTENSIONS``.

    The folder is listed once; looking an id up is then a dictionary access.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_id: dict[str, list[Path]] = {}
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if is_photo_file(path):
                    self._by_id.setdefault(path.stem, []).append(path)

    def find(self, image_id: str) -> Path | None:
        """The photo of ``image_id``, or None when it has none.

        Raises:
            DataError: naming both files when two files are the photo of one id.
        """
        paths = self._by_id.get(image_id)
        if not paths:
            return None
        if len(paths) > 1:
            raise DataError(f"image id {image_id!r} has {len(paths)} photos: {', '.join(str(p) for p in paths)}; "
                            "keep one")
        return paths[0]

    def ids(self) -> list[str]:
        return sorted(self._by_id)


def _open(source: PhotoSource, name: str) -> Image.Image:
    """The photo of a file or its bytes, not yet loaded (PIL), or read in full (DICOM)."""
    if isinstance(source, bytes):
        head = source[:MAGIC_OFFSET + len(MAGIC)]
    else:
        with open(source, "rb") as file:
            head = file.read(MAGIC_OFFSET + len(MAGIC))
    if is_dicom(head):
        return read_dicom(source, name)
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def decode(source: PhotoSource, at_least: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The photo as RGB at the smallest JPEG scale that keeps its sides >= ``at_least``; also
    the photo's own size.

    Greyscale, CMYK and palette images are converted; other formats and DICOM decode in full.

    Raises:
        DataError: naming the file when it is not a readable, complete photo.
    """
    name = describe(source)
    try:
        with _open(source, name) as img:
            source_size = img.size  # read before draft() shrinks it
            if at_least is not None:
                # DCT-domain downscaling: skips most of the decode cost of a 10 MP photo.
                img.draft("RGB", at_least)
            img.load()
            # convert() copies even an RGB image; the cache is read every epoch, so skip the copy.
            return (img if img.mode == "RGB" else img.convert("RGB")), source_size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name} is corrupt, truncated or not an image: {exc}") from None


def load_rgb(source: PhotoSource, min_side: int | None = None) -> Image.Image:
    """Decodes a photo as RGB, at a reduced JPEG scale that keeps both sides >= ``min_side``.

    Raises:
        DataError: naming the file when it is not a readable, complete image.
    """
    return decode(source, None if min_side is None else (min_side, min_side))[0]
