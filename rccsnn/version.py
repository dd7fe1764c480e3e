"""The package version (its own module, so that no module imports the package that imports the library calls)."""

__version__ = "0.1.0"
