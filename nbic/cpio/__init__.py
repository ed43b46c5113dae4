"""The cpio layer: entries, the newc format, compression, images, spec lists.

Standard library only at import time, so the in-container agent can use it.
"""
