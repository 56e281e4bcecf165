"""postwright: a complete mail system built on SMTP.

Layers (imports point down only): ``protocol`` (sans-IO), value types (``envelope``,
``config``), decisions and state (``policy``, ``queue``, ``delivery.routing``), ``net``,
``server`` and ``delivery`` drivers, then ``app`` and ``cli``.
"""

__version__ = "0.1.0"
