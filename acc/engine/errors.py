"""Errors as a researcher should read them: the line of their own file that failed, not torch's."""

from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path

# Frames in these are not where a researcher's mistake is: Python's and installed libraries' (torch),
# and ACC's own machinery. What is left is their task, generator, recipe or model file.
_NOT_USER_CODE = tuple(dict.fromkeys([
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
    *(str(Path(__file__).resolve().parent.parent / part) for part in ("engine", "store", "server", "registry.py")),
]))


def user_frame(e: BaseException) -> traceback.FrameSummary | None:
    """The deepest frame of `e`'s traceback in the user's code, else the deepest frame."""
    frames = traceback.extract_tb(e.__traceback__)
    for frame in reversed(frames):
        if not frame.filename.startswith(_NOT_USER_CODE) and not frame.filename.startswith("<"):
            return frame
    return frames[-1] if frames else None


def error_text(e: BaseException) -> str:
    """`Type: message (file:line)` for an error shown to a researcher, the line being the deepest
    one in their own code (not inside torch or the engine), then the exception's notes (e.g. the
    line of the recipe that asked for what failed)."""
    frame = user_frame(e)
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return "\n".join([f"{type(e).__name__}: {e}{where}", *getattr(e, "__notes__", ())])
