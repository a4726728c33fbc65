"""The one exception type the CLI turns into a one-line message (never a traceback)."""


class LmlabError(Exception):
    """A user-facing error: the message says what went wrong and how to fix it."""
