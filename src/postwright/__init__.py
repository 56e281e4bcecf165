"""postwright: a complete mail system built on SMTP.

Layers (imports point down only): ``protocol`` (sans-IO), value types (``envelope``,
``config``), decisions and state (``policy``, ``queue``, ``delivery.routing``), ``net``,
``server`` and ``delivery`` drivers, then ``app`` and ``cli``.
"""

__version__ = "0.1.0"


def build() -> str:
    """How this installation runs its hot path: "mypyc" when the modules ``setup.py``
    compiles are extension modules, "pure Python" when they are the ``.py`` files."""
    from .protocol import server

    return "mypyc" if not server.__file__.endswith(".py") else "pure Python"
