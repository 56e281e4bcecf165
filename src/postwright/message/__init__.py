"""Message helpers that work on header and body bytes: trace headers, later DSNs.

Value-level code only: no sockets, no files, no clock (times are passed in).
"""
