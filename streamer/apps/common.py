"""What the commands (cli, eval, batch, serve) share.

Example:
    >>> yaml_quote("clips/0.mp4"), yaml_quote("it's"), yaml_quote(4)
    ("'clips/0.mp4'", "'it''s'", '4')
"""

from __future__ import annotations

__all__ = ["yaml_quote"]


def yaml_quote(value: object) -> str:
    """``value`` as the right-hand side of a ``section.key=value`` override.

    A string is single-quoted, so that YAML keeps ``0``, ``yes`` or ``null`` in a path as text;
    anything else (a number, a bool) is written as ``str(value)`` and read back by YAML as such.
    """
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)
