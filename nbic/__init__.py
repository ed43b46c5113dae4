"""nbic, the Net Boot Image Compiler."""

__version__ = "0.1.0"
