"""Throughput benchmark: postwright against Postfix and an aiosmtpd sink (not a test suite).

``python -m bench`` (``make bench``) starts each peer on its own loopback port, drives it with
Postfix's ``smtp-source``, and prints a Markdown table; see ``bench/README.md``.
"""
