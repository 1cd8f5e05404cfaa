"""The I/O floor: plumbing every layer above may share, and nothing of its own above it.

``ranges`` (a byte range of an open file, handed out for zero-copy replies), ``threads`` (when
blocking file I/O may run on the event loop, and the one way to hand it to worker threads),
``private_dirs`` (owner-only directories). Imports nothing from the rest of the library.
"""
