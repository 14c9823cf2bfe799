"""The one error type users see.

Every failure a user can act on (a missing file, a checkpoint that does not fit its card, a mask
with an unknown label) raises :class:`SegdeployError` with one sentence that names the file, what
was expected and what was found. The CLI prints that sentence and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class SegdeployError(Exception):
    """A problem with the user's input, described in one actionable sentence."""
