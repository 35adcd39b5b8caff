"""The one exception type the CLI turns into a clear message instead of a traceback."""


class ScoderError(Exception):
    """A problem the user can fix: bad config, bad input path, mismatched run directory."""
