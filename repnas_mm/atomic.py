"""Writing files so that a failure never leaves a half-written one behind."""
import contextlib
import os
import os.path as osp
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix='.part'):
    """Yield a temporary path next to ``path``; rename it into place on
    success.

    On any exception the temporary file is removed and ``path`` is left as it
    was (absent, or its previous content). Standard library only.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=osp.basename(path) + '.',
                               suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_figure(fig, path, dpi=120):
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format='png', dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
