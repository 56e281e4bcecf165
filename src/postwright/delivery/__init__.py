"""Delivery: where a recipient's mail goes (routing) and the agents that put it there.

``routing`` is a pure decision (layer 2); the agents (``maildir``, later LMTP and remote SMTP)
touch the filesystem or the network and are driven by the queue manager.
"""
