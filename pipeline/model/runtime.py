"""TensorFlow, imported once per process with each of its start-up notices printed once.

TensorFlow's C++ library writes its oneDNN banner twice on import, before absl logging is set up, straight to
file descriptor 2 (``TF_CPP_MIN_LOG_LEVEL`` cannot silence it). :func:`import_tensorflow` captures that
descriptor during the import and writes each distinct notice once; the import itself runs in
:func:`pipeline.model.patches.lean_import`. Everything in this package calls it before Keras.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

from pipeline.model.patches import lean_import

_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")  # absl's "I0000 00:00:1796.08 4901 " (time, thread)


def import_tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            with lean_import():
                import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", errors="replace").splitlines()
    seen = set()
    for line in lines:
        key = _PREFIX.sub("", line)
        if key and key not in seen:
            seen.add(key)
            print(line, file=sys.stderr)
    return tensorflow
