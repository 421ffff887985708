"""Helper: the one name sanitiser, for file names and MQTT discovery ids made from labels,
sources, device ids and site names.

Contract: :func:`safe_name` maps any string to one made only of the characters ``allowed``
(a regular-expression character class body) and ``_``; pure, thread-safe. The callers differ
on purpose, and each keeps the output it always gave:

- output files (Raven tables, clips; the defaults): ASCII letters, digits, ``._-``; runs of
  other characters become one ``_``, and ``_`` is stripped from both ends;
- Home Assistant discovery ids: ASCII letters, digits, ``_-`` (no dot: the id is a topic level
  and an entity id), one ``_`` per character;
- training fold folders: any Unicode letter or digit (``\\w``), ``._-``, one ``_`` per character.
"""

from __future__ import annotations

import re

FILE_CHARS = r"A-Za-z0-9._-"
"""Characters kept in output file names."""
ID_CHARS = r"A-Za-z0-9_-"
"""Characters kept in Home Assistant object ids."""
WORD_CHARS = r"\w.-"
"""Characters kept in folder names of training folds (Unicode letters and digits too)."""


def safe_name(
    text: str, *, allowed: str = FILE_CHARS, squeeze: bool = True, fallback: str = ""
) -> str:
    """``text`` with every character outside ``allowed`` replaced by ``_``.

    squeeze: a run of such characters becomes one ``_`` and ``_`` is stripped from both ends
    (False: one ``_`` per character, nothing stripped).
    fallback: returned when the result is empty.
    """
    if squeeze:
        name = re.sub(f"[^{allowed}]+", "_", text).strip("_")
    else:
        name = re.sub(f"[^{allowed}]", "_", text)
    return name or fallback
