"""The errors raised while reading, converting and loading Human3R checkpoints, and how their
messages show what a file holds."""

from __future__ import annotations

from typing import Any

PREVIEW_CHARS = 80
_INT_BITS_SHOWN = 256  # str() of a huge int is quadratic


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not match the model it describes."""


class UnsafePickleError(CheckpointError):
    """A checkpoint's pickle tries to call something outside the allow-list."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """At most ``limit`` characters showing ``value``, rendered without rendering all of it: a
    hostile object (a list of 2**60 shared leaves, a 16 MiB string) costs ``limit``, not its
    size."""
    return _render(value, limit)[:limit]


def type_name(value: Any) -> str:
    """The name of ``value``'s type, cut to what a message shows (a stub's name comes from
    the file)."""
    return type(value).__name__[:PREVIEW_CHARS]


def _render(value: Any, room: int) -> str:
    if room <= 0:
        return ""
    if isinstance(value, (str, bytes)):
        return repr(value[:room]) + ("..." if len(value) > room else "")
    if type(value) is int and value.bit_length() > _INT_BITS_SHOWN:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, (int, float, complex, type(None))):
        return repr(value)
    if isinstance(value, (tuple, list, dict)):
        brackets = "{}" if isinstance(value, dict) else "()" if isinstance(value, tuple) else "[]"
        text = brackets[0]
        for item in value.items() if isinstance(value, dict) else value:
            if len(text) >= room:  # every item adds characters, and every level one more
                return text + "..."
            if isinstance(value, dict):
                key, item = item
                text += _render(key, room - len(text)) + ": "
            text += _render(item, room - len(text)) + ", "
        return text + brackets[1]
    return f"<{type_name(value)}>"
