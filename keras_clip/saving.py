"""Writing user-owned files without ever leaving them half-written."""

import json
import os
import tempfile
import zipfile


def write_atomic(path, write, suffix=""):
    """Writes a file atomically: ``write(tmp_path)`` fills a temporary file beside ``path``
    (hidden, ending in ``suffix``), which then gets the usual permissions (0o666 & ~umask) and is
    renamed to ``path``; on any error (KeyboardInterrupt too) the temporary file is removed and
    ``path`` is untouched. Creates the parent folder. Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text_atomic(path, text, newline="\n"):
    """`write_atomic` of a UTF-8 text file."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
    return write_atomic(path, write)


def write_bytes_atomic(path, write_to_file):
    """`write_atomic` where ``write_to_file(f)`` writes into the open binary file ``f``."""
    def write(tmp):
        with open(tmp, "wb") as f:
            write_to_file(f)
    return write_atomic(path, write)


def save_model_atomic(model, path):
    """Saves `model` to `path` (.keras) atomically: a temporary file in the same directory,
    then `os.replace`, so readers never see a partial file."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"the output path must end in .keras, got {path!r}")
    return write_atomic(path, lambda tmp: model.save(tmp, overwrite=True), suffix=".keras")


class ModelClassError(TypeError):
    """A ``.keras`` file holds a model of another class than the one asked for (`load_model`)."""


def load_model(path, expected=None, compile=False):
    """Loads a ``.keras`` model file with clear errors.

    The classes it holds must be registered, i.e. their modules imported (``import keras_clip``
    registers CLIP; ``import keras_dalle`` the dVAE and DALL·E). With ``expected``, the class
    named in the archive's ``config.json`` is checked before anything is deserialised, so a file
    holding a model of a class this process has not registered (e.g. a keras_dalle dVAE read by
    a keras_clip command) is named as such rather than failing inside Keras.

    Args:
        path: a ``.keras`` file.
        expected: a class or tuple of classes the model must be an instance of (e.g.
            ``keras_clip.CLIP``); None accepts any model.
        compile: restore the training configuration (optimizer and its state) as saved.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` does not end in ``.keras``, or the file is not a readable ``.keras``
            archive (not a zip, truncated, no ``config.json``).
        ModelClassError (a TypeError): the file holds a model of another class than
            ``expected``.
    """
    import keras

    path = os.fspath(path)
    names = _class_names(expected)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{names or 'model'} file not found: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras model file ({names or 'a Keras model'}), got {path!r}")
    config = read_keras_config(path)
    if expected is not None:
        _check_saved_class(path, config, expected, names)
    try:
        model = keras.saving.load_model(path, compile=compile)
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # e.g. a damaged weights file
        raise ValueError(f"{path} exists but is not a readable .keras archive: {e}") from None
    if expected is not None and not isinstance(model, expected):
        raise ModelClassError(f"{path} holds a {type(model).__name__}, expected {names}")
    return model


def read_keras_config(path):
    """The model configuration (a dict: ``class_name``, ``module``, ``registered_name``,
    ``config`` …) stored in a ``.keras`` archive's ``config.json``, read without building the
    model.

    Raises:
        ValueError: the file is not a zip archive (random bytes, truncated …) or has no valid
            ``config.json``; the message names the file.
    """
    path = os.fspath(path)
    unreadable = f"{path} exists but is not a readable .keras archive"
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("config.json")
    except zipfile.BadZipFile as e:
        raise ValueError(f"{unreadable} (not a zip file, or a truncated one: {e})") from None
    except KeyError:
        raise ValueError(f"{unreadable}: it has no config.json") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as e:
        raise ValueError(f"{unreadable}: {e}") from None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{unreadable}: its config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ValueError(f"{unreadable}: its config.json names no model class")
    return config


def _check_saved_class(path, config, expected, names):
    """ModelClassError unless the class saved in ``config`` is (a subclass of) ``expected``."""
    import keras

    classes = expected if isinstance(expected, tuple) else (expected,)
    class_name, registered = config["class_name"], config.get("registered_name")
    if any(registered == keras.saving.get_registered_name(c) for c in classes):
        return
    if not registered and any(class_name == c.__name__ for c in classes):
        return
    found = keras.saving.get_registered_object(registered) if registered else None
    if isinstance(found, type) and issubclass(found, classes):
        return
    module = config.get("module")
    where = f" (from {module})" if module and module != "keras" and found is None else ""
    raise ModelClassError(f"{path} holds a {class_name}{where}, expected {names}")


def _class_names(expected):
    if expected is None:
        return ""
    classes = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(c.__name__ for c in classes)


class atomic_folder:
    """Context manager that builds a folder under a temporary name beside ``path`` and renames it
    to ``path`` when the block ends without an error (on an error the temporary folder is
    removed and nothing at ``path`` changes).

    ``path`` must not exist unless ``overwrite=True``; an existing folder is then replaced (moved
    aside, the new one renamed in, the old one deleted).

    Example:
        >>> with atomic_folder("out/model") as tmp:
        ...     write_files(tmp)

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        NotADirectoryError: ``path`` exists and is a file.
    """

    def __init__(self, path, overwrite=False):
        self.path = os.path.abspath(os.fspath(path))
        self.overwrite = overwrite
        self.tmp = None

    def __enter__(self):
        if os.path.isfile(self.path):
            raise NotADirectoryError(f"{self.path} exists and is a file, not a folder")
        if os.path.exists(self.path) and not self.overwrite:
            raise FileExistsError(f"{self.path} already exists; choose another folder or pass "
                                  "overwrite=True (--overwrite)")
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".", dir=parent)
        os.chmod(self.tmp, 0o777 & ~_umask())
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if os.path.exists(self.path):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(self.path) + ".old.",
                                   dir=os.path.dirname(self.path))
            os.rmdir(old)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask
