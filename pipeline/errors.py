"""Errors meant for the user: the CLI prints them as one line, without a traceback."""


class FoleyError(Exception):
    """A user-facing error (bad flag, bad file, refused cache). The message is the whole story."""
