"""Sans-IO protocol cores: bytes in, events out; replies in, bytes out.

Standard library only. Nothing here touches sockets, asyncio, the clock, logging or files.
"""
