"""Inbound SMTP sessions: drive the sans-IO core over a stream, apply policy, hand to the queue."""
