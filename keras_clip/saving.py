"""Writing user-owned files without ever leaving them half-written."""

import os
import tempfile


def save_model_atomic(model, path):
    """Saves `model` to `path` (.keras) atomically: a temporary file in the same directory,
    then `os.replace`, so readers never see a partial file."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"the output path must end in .keras, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:-6] + ".", suffix=".keras",
                               dir=folder)
    os.close(fd)
    try:
        model.save(tmp, overwrite=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
