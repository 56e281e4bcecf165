"""The only code that touches sockets and TLS: listeners and a stream adapter. Thin."""
