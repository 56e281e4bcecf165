"""Build: the modules on the path every message takes are compiled to C with mypyc.

They stay ordinary, fully typed Python (``mypy --strict`` checks them as it checks the rest);
mypyc turns them into extension modules that the interpreter imports in place of the
``.py`` files. The rest of the package is left as it is. ``POSTWRIGHT_PURE=1`` at install
time, or a machine without mypyc or a C compiler, gives the same package in pure Python: the
build says so and goes on without the extensions.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Builds the compiled modules all or none: if one fails, none is kept."""

    def run(self) -> None:
        outputs = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        try:
            super().run()
        except Exception as exc:  # a missing or failing C compiler
            for path in outputs:
                path.unlink(missing_ok=True)
            print(f"postwright: compiling with mypyc failed ({exc}); installing pure Python",
                  file=sys.stderr)
            return
        # An extension whose C code came out the same is not linked again; it is as new as
        # the sources it was just generated from all the same (tests/test_build.py checks).
        for path in outputs:
            if path.exists():
                path.touch()


def _extensions() -> list[object]:
    if os.environ.get("POSTWRIGHT_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("postwright: mypyc is not available; installing pure Python", file=sys.stderr)
        return []
    with open(Path(__file__).with_name("pyproject.toml"), "rb") as f:
        modules = tomllib.load(f)["tool"]["postwright"]["compiled"]
    return list(mypycify([f"src/{name}" for name in modules], opt_level="3",
                         group_name="postwright"))


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
