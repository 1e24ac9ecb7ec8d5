"""The one exception type that user-facing code raises for bad input.

The CLI prints `str(error)` as a single line and exits non-zero; nothing else
is caught there, so a bug still shows its traceback.
"""


class SkyfixError(Exception):
    """Bad input or an unusable environment, explained in one line.

    Whatever a message quotes (a library's own multi-line error text, say) is folded onto
    that one line."""

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))
