"""Label and id files as spreadsheets save them: UTF-8 (with or without a byte-order mark),
UTF-16 with its mark (Excel's "Unicode text"), else Windows-1252 (Excel's "CSV" on Windows)."""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

from pipeline.errors import DataError

log = logging.getLogger(__name__)

# Tried in this order after the byte-order marks; Windows-1252 decodes nearly any byte, so it is last.
FALLBACK_ENCODINGS = ("utf-8", "cp1252")
_MARKS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: str | Path) -> str:
    """The file's text, in the first of its byte-order mark's encoding and ``FALLBACK_ENCODINGS``
    that decodes it; a ``DataError`` naming the file and the encodings tried when none does."""
    path = Path(path)
    data = path.read_bytes()
    for mark, encoding in _MARKS:
        if data.startswith(mark):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} starts with a {encoding} byte-order mark but is not {encoding} text "
                                f"(byte {exc.start}); save it as UTF-8") from None
    for encoding in FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding != FALLBACK_ENCODINGS[0]:
            log.info("%s is not UTF-8; read it as %s", path, encoding)
        return text
    tried = [*dict.fromkeys(encoding for _, encoding in _MARKS), *FALLBACK_ENCODINGS]
    raise DataError(f"{path} is not text in any encoding tried ({', '.join(tried)}); save it as UTF-8")
