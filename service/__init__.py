"""mediamoderation: keeps known abuse media off a wiki."""

import os as _os
import tempfile as _tempfile
from pathlib import Path as _Path

__version__ = "0.1.0"

# numba's on-disk cache of compiled kernels (``cache=True``: service.matchers.pdq_kernels, service.media.pdq,
# service.media.views), set here so that it is in force before anything imports numba.  numba writes the
# cache beside the module when it can; the container's site-packages is read-only, so without a writable
# package directory and without ``NUMBA_CACHE_DIR`` it goes under the temporary directory (the image sets
# ``NUMBA_CACHE_DIR=/tmp/mediamoderation-numba``).
if "NUMBA_CACHE_DIR" not in _os.environ and not _os.access(_Path(__file__).parent, _os.W_OK):
    _os.environ["NUMBA_CACHE_DIR"] = str(_Path(_tempfile.gettempdir()) / "mediamoderation-numba")
