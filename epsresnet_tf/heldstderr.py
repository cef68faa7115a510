"""Holding back what C++ libraries write to file descriptor 2: TensorFlow's start-up notices
and TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate" go there directly, past
Python's sys.stderr and logging, so neither can filter them; an os.dup2 around the call
can (no library does this for us)."""

import contextlib
import os
import sys
import tempfile


def tensorflow_shows_info() -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL lets TensorFlow's INFO lines through (unset: it does)."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0")


@contextlib.contextmanager
def held_stderr(keep=lambda line: False):
    """Run the block with file descriptor 2 in a temporary file. On an exception everything
    it wrote is written out again (it may explain the failure); otherwise only the lines
    for which `keep(line)` is true."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            shown = "".join(line for line in lines if failed or keep(line))
            if shown:
                os.write(2, shown.encode())
