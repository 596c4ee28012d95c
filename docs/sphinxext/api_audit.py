"""Audit the API reference: coverage of public names and Examples sections.

Run from the repository root after a build::

    python docs/sphinxext/api_audit.py [docs/_build/html/objects.inv]

It prints (1) every public name of skdcd's modules missing from the built object
inventory, and (2) every public function, class and method whose docstring has no
``Examples`` section (numpydoc's EX01). Exits with status 1 when (1) is not empty.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import sys

MODULES = ["skdcd", "skdcd.datasets", "skdcd.diffusion", "skdcd.samplers", "skdcd.conditional",
           "skdcd.partition", "skdcd.networks", "skdcd.plotting", "skdcd.cli"]


def public_names(modname: str) -> list[tuple[str, object]]:
    """Public names defined in (or, for the package, exported by) a module."""
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name)
        if inspect.ismodule(obj) or isinstance(obj, __future__._Feature):
            continue
        if not isinstance(obj, int | float | str | tuple | dict | list) and not str(
                getattr(obj, "__module__", "skdcd")).startswith("skdcd") and not (
                inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # a typing alias imported from elsewhere (ArrayLike, EnergyFn)
        defined = getattr(obj, "__module__", None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and defined != modname \
                and modname != "skdcd":
            continue  # imported from elsewhere
        out.append((name, obj))
    return out


def inventory(path: str) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(path, "rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    data = getattr(inv, "data", inv)
    return {name for entries in data.values() for name in entries}


def has_examples(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    return "\nExamples\n--------" in "\n" + doc


def main(argv: list[str]) -> int:
    inv = inventory(argv[1] if len(argv) > 1 else "docs/_build/html/objects.inv")
    missing, no_examples = [], []
    for modname in MODULES:
        for name, obj in public_names(modname):
            qual = f"{modname}.{name}"
            if qual not in inv:
                missing.append(qual)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                if not has_examples(obj):
                    no_examples.append(qual)
            if inspect.isclass(obj):
                for mname, member in vars(obj).items():
                    if mname.startswith("_") or not (inspect.isfunction(member)
                                                     or isinstance(member, property)):
                        continue
                    if f"{qual}.{mname}" not in inv:
                        missing.append(f"{qual}.{mname}")
                    target = member.fget if isinstance(member, property) else member
                    if not isinstance(member, property) and not has_examples(target):
                        no_examples.append(f"{qual}.{mname}")
            if modname == "skdcd" and inspect.isclass(obj):  # inherited public methods
                for base in obj.__mro__[1:]:
                    if base.__module__ not in ("skdcd._base", "skdcd._persistence"):
                        continue
                    for mname, member in vars(base).items():
                        if mname.startswith("_"):
                            continue
                        if f"{qual}.{mname}" not in inv:
                            missing.append(f"{qual}.{mname}")
                        if inspect.isfunction(member) and not has_examples(member):
                            no_examples.append(f"{qual}.{mname}")
    print("public names missing from the API reference:", *missing or ["none"], sep="\n  ")
    print("public functions/classes/methods without an Examples section:",
          *no_examples or ["none"], sep="\n  ")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
