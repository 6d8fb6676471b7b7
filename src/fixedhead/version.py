"""The package's version, from its installed metadata: pyproject.toml is the one place it is written."""

from importlib import metadata

try:
    VERSION = metadata.version("fixedhead")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown (not installed)"
