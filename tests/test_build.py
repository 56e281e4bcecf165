"""The installation runs what the sources say.

Every module pyproject.toml lists for mypyc is an extension module (or, with POSTWRIGHT_PURE
set, none is), and no extension module is older than the ``.py`` file it was built from: a
stale one would run code the source no longer holds.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import postwright

ROOT = Path(__file__).resolve().parents[1]


def compiled_modules() -> dict[str, str]:
    """Module name -> the file it was imported from, for each module setup.py compiles."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = tomllib.load(f)["tool"]["postwright"]["compiled"]
    out = {}
    for path in listed:
        name = path.removesuffix(".py").replace("/", ".")
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        out[name] = spec.origin
    return out


def test_the_listed_modules_exist() -> None:
    for name, origin in compiled_modules().items():
        source = ROOT / "src" / (name.replace(".", "/") + ".py")
        assert source.is_file(), f"{name} is listed for mypyc but has no source"
        assert Path(origin).parent == source.parent, f"{name} comes from {origin}"


def test_all_compiled_unless_pure_was_asked_for() -> None:
    origins = compiled_modules()
    pure = [name for name, origin in origins.items() if origin.endswith(".py")]
    if os.environ.get("POSTWRIGHT_PURE"):
        assert pure == list(origins), "POSTWRIGHT_PURE is set, but some modules are compiled"
        assert postwright.build() == "pure Python"
    else:
        assert pure == [], f"not compiled (run make install, or set POSTWRIGHT_PURE): {pure}"
        assert postwright.build() == "mypyc"


def test_no_extension_is_older_than_its_source() -> None:
    # The compiled code of every module is in one library (setup.py's group_name); each
    # module's own extension is a small shim, rewritten only when its interface changes.
    library = importlib.util.find_spec("postwright__mypyc")
    built = os.stat(library.origin).st_mtime if library and library.origin else 0.0
    stale = []
    for name, origin in compiled_modules().items():
        if origin.endswith(".py"):
            continue
        source = ROOT / "src" / (name.replace(".", "/") + ".py")
        if built < os.stat(source).st_mtime:
            stale.append(name)
    assert stale == [], f"compiled before their source last changed (make install): {stale}"


def test_version_names_the_build() -> None:
    out = subprocess.run([sys.executable, "-m", "postwright", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"postwright {postwright.__version__} ({postwright.build()})"
