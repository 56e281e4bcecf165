"""Policy decisions made during an SMTP session: relay control, later SPF, DKIM, DMARC, limits.

Policies look at immutable values and return a verdict (``None`` to accept, or a ``Reply``).
They never write to sockets and never touch the clock or files themselves.
"""
