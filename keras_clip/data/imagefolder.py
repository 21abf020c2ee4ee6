"""Labelled images in torchvision's ImageFolder layout, for classification evaluation.

    root/
        golden_retriever/  001.jpg  002.png ...
        tabby_cat/         a.jpg    sub/b.jpg ...

One sub-folder per class (sorted by name: the label order, as torchvision's ``ImageFolder``);
a class's images are every file below its folder (recursively) whose extension is in
``IMAGE_EXTENSIONS`` (case-insensitive; hidden files and folders are skipped). Class names come
from the folder names with ``_`` read as a space, or from a classnames file (one name per line,
in the sorted folder order).

Images are read and decoded by the project's one image path (``decode_images`` →
``CLIPImagePreprocessor``); a file that cannot be read or decoded is skipped and counted as
``bad_image`` in a :class:`~keras_clip.data.readers.SkipCounter`, as training does.

Example:
    >>> folder = read_image_folder("data/pets/test")
    >>> folder.classnames[:2], len(folder.paths)
    (['golden retriever', 'tabby cat'], 1200)
    >>> ds = image_folder_dataset(folder, image_size=224, batch_size=64)
    >>> {k: v.shape for k, v in next(iter(ds)).items()}
    {'images': TensorShape([64, 224, 224, 3]), 'labels': TensorShape([64])}
"""

import collections
import os

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

ImageFolder = collections.namedtuple("ImageFolder", ["root", "paths", "labels", "classnames",
                                                     "folders"])
ImageFolder.__doc__ = """A listed ImageFolder: ``paths`` (list of str), ``labels`` (int64 (N,),
index into ``classnames``), ``classnames`` (list of str), ``folders`` (the class folder names)."""


def read_classnames(path):
    """Class names from a text file: one per line (UTF-8), blank lines ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"classnames file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"classnames file {path} is not UTF-8 text: {e}") from None
    if not names:
        raise ValueError(f"classnames file {path} holds no names")
    return names


def read_templates(path):
    """Zero-shot prompt templates from a text file: one format string with ``{}`` per line."""
    try:
        with open(path, encoding="utf-8") as f:
            templates = [line.rstrip("\r\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"templates file not found: {path}") from None
    if not templates:
        raise ValueError(f"templates file {path} holds no templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates file {path}: every line needs '{{}}' for the class name; "
                         f"{len(bad)} do not, e.g. {bad[0]!r}")
    return templates


def read_image_folder(root, classnames=None, extensions=IMAGE_EXTENSIONS):
    """Lists an ImageFolder tree.

    Args:
        root: the folder holding one sub-folder per class.
        classnames: None (folder names, ``_`` → space), a list of names or the path of a
            classnames file; one name per class folder, in sorted folder order.
        extensions: lower-case extensions (with the dot) that count as images.

    Returns:
        an :data:`ImageFolder`.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` missing or a file.
        ValueError: fewer than 2 class folders; a class folder without images (named); no
            images at all; a classnames list of the wrong length.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a folder (expected an ImageFolder root): {root}")
    folders = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    exts = tuple(e.lower() for e in extensions)
    paths, labels, empty = [], [], []
    for label, folder in enumerate(folders):
        found = []
        for dirpath, dirs, files in os.walk(os.path.join(root, folder), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in files
                      if not f.startswith(".") and f.lower().endswith(exts)]
        if not found:
            empty.append(folder)
        paths += sorted(found)
        labels += [label] * len(found)
    if not paths:
        loose = [f for f in os.listdir(root) if f.lower().endswith(exts)]
        hint = (f"; {len(loose)} image(s) lie directly in {root}: put each class's images in a "
                f"sub-folder named after the class" if loose else "")
        raise ValueError(f"no images in ImageFolder {root} ({len(folders)} class folder(s); "
                         f"images must end in one of {', '.join(exts)}){hint}")
    if len(folders) < 2:
        raise ValueError(f"ImageFolder {root} has {len(folders)} class folder ({folders}); "
                         f"classification needs at least 2 (one sub-folder per class)")
    if empty:
        raise ValueError(f"ImageFolder {root}: class folder(s) {empty} hold no images "
                         f"(extensions {', '.join(exts)})")
    if classnames is None:
        names = [f.replace("_", " ") for f in folders]
    else:
        names = read_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) \
            else [str(c) for c in classnames]
        if len(names) != len(folders):
            raise ValueError(f"{len(names)} class names for {len(folders)} class folders in "
                             f"{root} (one name per folder, in sorted folder order: "
                             f"{folders[:5]}{' ...' if len(folders) > 5 else ''})")
    return ImageFolder(root, paths, np.array(labels, np.int64), names, folders)


def image_folder_dataset(folder, image_size, batch_size, skip_counter=None, image_format="clip"):
    """Batched ``{"images": (B, S, S, 3), "labels": int64 (B,)}`` of an :data:`ImageFolder`
    (or a root path), in file order, not shuffled; the last batch may be smaller.

    Files are read in Python (a generator) and decoded in parallel by ``decode_images``.
    Files that cannot be read or decoded are dropped and counted as ``bad_image`` in
    ``skip_counter`` (also available as ``dataset.skip_counter``). ``image_format`` is
    ``"clip"`` (normalised float32), ``"unit"`` or ``"uint8"`` (see ``decode_images``).
    """
    import tensorflow as tf

    from keras_clip.data.readers import SkipCounter, decode_images

    if not isinstance(folder, ImageFolder):
        folder = read_image_folder(folder)
    counter = skip_counter if skip_counter is not None else SkipCounter()

    def records():  # runs again on every iteration of the dataset
        for path, label in zip(folder.paths, folder.labels):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:  # vanished or unreadable since the listing: skipped and counted
                counter.add("bad_image", True)
                continue
            yield {"image_bytes": data, "labels": label}

    read = tf.data.Dataset.from_generator(records, output_signature={
        "image_bytes": tf.TensorSpec([], tf.string), "labels": tf.TensorSpec([], tf.int64)})
    ds = decode_images(read, image_size, counter, image_format)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ds.skip_counter = counter
    return ds
