"""pycolmap (the `survey` extra: `maps survey`, the registration on survey packs), imported in
this one place.

The pycolmap 4.2.1 wheel's extension exports a zlib of its own. A zlib user loaded after it
(Python's zlib module, Pillow's or OpenCV's PNG writer) binds to that one and corrupts the
heap: the process aborts at its next PNG, e.g. the replay's plot (the same kind of clash:
colmap/colmap#3477). Loaded before pycolmap, each keeps its own.
"""

from __future__ import annotations

from types import ModuleType

from skyfix.runtime.core.errors import SkyfixError


def load_pycolmap(needed_for: str) -> ModuleType:
    """The pycolmap module, the zlib users above loaded first; SkyfixError (one line, naming
    `needed_for` and the install) where pycolmap is not installed."""
    import zlib  # noqa: F401  (loaded before pycolmap: see the module's docstring)

    import cv2  # noqa: F401
    import PIL.Image  # noqa: F401
    try:
        import pycolmap
    except ImportError:
        raise SkyfixError(f"{needed_for} needs pycolmap: pip install 'skyfix[survey]'"
                          ) from None
    return pycolmap
