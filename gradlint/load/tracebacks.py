"""Tracebacks in the user's terms: an exception raised in the user's code is shown with the
user's frames, not gradlint's, importlib's, torch's or the standard library's, and is placed at
the innermost line of the user's file."""

from __future__ import annotations

import importlib
import inspect
import os
import traceback

from gradlint.base.errors import GradlintError
from gradlint.base.paths import shown_path
from gradlint.load.files import is_library_file, same_file

__all__ = ["format_user_traceback", "forward_site", "innermost_line", "innermost_user_frame", "user_error"]

_GRADLINT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the gradlint package
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def _is_ours(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    real = os.path.abspath(filename)
    return real.startswith((_GRADLINT_DIR + os.sep, _IMPORTLIB_DIR + os.sep))


def _trim(exc_tb: traceback.TracebackException, seen: set[int], files: set[str]) -> None:
    if id(exc_tb) in seen:
        return
    seen.add(id(exc_tb))
    frames = [f for f in exc_tb.stack if not _is_ours(f.filename)]
    # torch's and the standard library's frames say how, not where: the user's last frame is the
    # call that failed. A traceback that runs in libraries only is left whole.
    users = [f for f in frames if not is_library_file(f.filename)]
    exc_tb.stack = traceback.StackSummary.from_list(users or frames)
    files.update(f.filename for f in exc_tb.stack)
    if isinstance(getattr(exc_tb, "filename", None), str):  # a SyntaxError's own file
        files.add(exc_tb.filename)
    for chained in (exc_tb.__cause__, exc_tb.__context__):
        if chained is not None:
            _trim(chained, seen, files)


def format_user_traceback(exc: BaseException) -> str:
    """Formats an exception's traceback with the user's frames only.

    gradlint's, importlib's, torch's and the standard library's frames are left out (all of them
    are kept when no frame of the user's remains); files below the working directory are shown
    relative to it, as the report names them.

    Args:
        exc: An exception raised in the user's code.

    Returns:
        The traceback text, chained exceptions included.
    """
    exc_tb = traceback.TracebackException.from_exception(exc)
    files: set[str] = set()
    _trim(exc_tb, set(), files)
    text = "".join(exc_tb.format())
    for name in files:
        if os.path.isabs(name) and (shown := shown_path(name)) != name:
            text = text.replace(f'File "{name}"', f'File "{shown}"')
    return text


def innermost_line(exc: BaseException, path: str | os.PathLike[str]) -> int | None:
    """Returns the line of the innermost traceback frame that runs in ``path``.

    Args:
        exc: The exception.
        path: The user's file.

    Returns:
        The line number, or None when no frame ran in that file.
    """
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if same_file(frame.filename, path):
            return frame.lineno
    return None


def innermost_user_frame(exc: BaseException) -> tuple[str, int] | None:
    """Returns ``(file, line)`` of the innermost traceback frame in the user's code.

    The user's code is whatever is neither gradlint's nor importlib's, torch's or the
    standard library's; files below the working directory are named relative to it.

    Args:
        exc: The exception.

    Returns:
        The file and line, or None when every frame is a library's.
    """
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not _is_ours(frame.filename) and not is_library_file(frame.filename) and frame.lineno:
            return shown_path(frame.filename), frame.lineno
    return None


def user_error(cls: type[GradlintError], message: str, exc: BaseException, path: str,
               line: int | None, hint: str | None = None) -> GradlintError:
    """A gradlint error of class ``cls`` for ``exc``, raised in the user's code, at ``path`` and
    ``line``, carrying the traceback in the user's terms."""
    err = cls(message, path=path, line=line, hint=hint)
    err.traceback_text = format_user_traceback(exc)
    return err


def forward_site(model: object) -> tuple[str | None, int | None]:
    """Where ``type(model).forward`` is defined: its file as shown and its ``def`` line, or
    (None, None) for a forward without Python source."""
    forward = type(model).forward
    try:
        lines, line = inspect.getsourcelines(forward)
        path = shown_path(inspect.getsourcefile(forward))
    except (OSError, TypeError):
        return None, None
    return path, line + next((i for i, text in enumerate(lines) if text.lstrip().startswith("def ")), 0)
