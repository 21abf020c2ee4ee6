"""A folder of image files (searched recursively) as an image source for the embedding job.

The readers in :mod:`keras_clip.data.readers` cover shard formats (img2dataset TFRecord,
WebDataset, TSV); this module lists a plain folder tree. Files are matched by extension — every
format :class:`~keras_clip.preprocessing.CLIPImagePreprocessor` decodes: JPEG, PNG, GIF, WebP,
BMP — case-insensitively. A caption may sit beside an image as a text file of the same stem
(``cat.jpg`` + ``cat.txt``, as in clip-retrieval's and img2dataset's ``files`` output); without
one the caption is missing (None).

Example:
    >>> files = list_image_folder("/photos")
    >>> files[0]
    ImageFile(path='/photos/2024/a.jpg', relative='2024/a.jpg', caption=None)
"""

import collections
import os

IMAGE_FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

ImageFile = collections.namedtuple("ImageFile", ["path", "relative", "caption"])


def list_image_folder(folder, extensions=IMAGE_FOLDER_EXTENSIONS, read_captions=True):
    """Every image file under ``folder`` (recursively), sorted by relative path.

    Args:
        folder: a local directory.
        extensions: lower-case file extensions (with the dot) counted as images.
        read_captions: read ``<stem>.txt`` beside each image as its caption (UTF-8, stripped;
            an empty file or invalid UTF-8 gives None).

    Returns:
        list of :data:`ImageFile` ``(path, relative, caption)``: ``path`` absolute-or-as-given
        joined path, ``relative`` the path below ``folder`` with ``/`` separators, ``caption``
        a str or None. Hidden files and folders (starting with ``.``) are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
        ValueError: no image file under ``folder`` (the message says how many other files were
            seen and which extensions count).
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"not a folder: {folder}")
    exts = tuple(e.lower() for e in extensions)
    found, others = [], 0
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(exts):
                path = os.path.join(root, name)
                found.append((os.path.relpath(path, folder).replace(os.sep, "/"), path))
            else:
                others += 1
    if not found:
        what = f"{others} other file(s)" if others else "no files at all"
        raise ValueError(f"no image files in {folder} (searched recursively; found {what}); "
                         f"images must end in one of {', '.join(exts)}")
    found.sort()
    return [ImageFile(path, rel, _caption(path) if read_captions else None)
            for rel, path in found]


def _caption(image_path):
    stem = os.path.splitext(image_path)[0]
    try:
        with open(stem + ".txt", "rb") as f:
            text = f.read().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None
