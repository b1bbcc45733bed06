"""The generation parameters stored in an image: the one reader the API's ``png-info`` and the UI's PNG Info use.

Parameters live in the PNG text chunk ``parameters`` (what Serena and A1111 write for PNG) or in the EXIF
UserComment (JPEG, WEBP). A UserComment starts with an 8-byte character code (EXIF 2.3, 4.6.5); A1111 reads it with
piexif's ``UserComment.load``, where ``UNICODE`` is UTF-16 big-endian whatever the file's TIFF byte order.
"""

from __future__ import annotations

import logging

log = logging.getLogger("serena")

EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769

UNICODE_CODE, _ASCII, _JIS, _UNDEFINED = b"UNICODE\0", b"ASCII\0\0\0", b"JIS\0\0\0\0\0", b"\0" * 8


def user_comment_text(value) -> str:
    """The text of an EXIF UserComment (``bytes`` with its character code, or a ``str`` Pillow already decoded).

    ``UNICODE`` is UTF-16 big-endian, as piexif reads it; a byte order mark, where a writer put one, is honoured
    (piexif would show it as a character). ``JIS`` is Shift JIS. ``ASCII``, undefined (eight zero bytes) and a
    comment without a code are read as UTF-8, undecodable bytes replaced, so a mislabelled comment still shows.
    """
    if isinstance(value, str):
        return value
    data = bytes(value)
    prefix, body = data[:8], data[8:]
    if prefix == UNICODE_CODE:
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body[2:].decode("utf-16-le" if body[:2] == b"\xff\xfe" else "utf-16-be", errors="replace")
        return body.decode("utf-16-be", errors="replace")
    if prefix == _JIS:
        return body.decode("shift_jis", errors="replace")
    if prefix in (_ASCII, _UNDEFINED):
        return body.decode("utf-8", errors="replace")
    return data.decode("utf-8", errors="replace")


def read_parameters(image) -> tuple[str, dict]:
    """``(parameters text, other metadata)`` of a PIL image; ``""`` when it holds no parameters.

    The other metadata are the scalar ``image.info`` entries (text chunks, JFIF version...); the raw EXIF and ICC
    blocks are bytes, so never among them. A broken EXIF block means "no parameters", never an error: the image
    itself is still usable.
    """
    items = {k: v for k, v in image.info.items() if isinstance(v, (str, int, float, bool))}
    text = items.pop("parameters", None)
    if text is None:
        try:
            exif = image.getexif()
            comment = exif.get(EXIF_USER_COMMENT) or exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a malformed EXIF block
            log.info("could not read the EXIF of an image: %s", e)
            comment = None
        text = user_comment_text(comment) if comment else None
    return text or "", items
