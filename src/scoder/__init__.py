"""scoder: turn a small open LLM into a generator of code-instruction data (the SCoder method)."""

from importlib import metadata

try:
    __version__ = metadata.version("scoder")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
