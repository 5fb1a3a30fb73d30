"""The one exception type a user sees as a single line, never as a traceback."""


class ArtcapError(Exception):
    """A problem with the user's input or environment. The message names the file, row or
    field and says what to do; the CLI prints it as one line and exits non-zero."""
