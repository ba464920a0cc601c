"""The rxfed protocol core, sans-I/O: canonical bytes, signatures, validation.

Nothing here opens a socket, reads a clock or touches the store: time, randomness and keys
come in as parameters, and every function returns a value or raises an
:class:`rxfed.errors.RxfedError` carrying an HTTP status hint.
"""
