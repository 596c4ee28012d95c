"""The prose documentation stays true to the code.

The docstrings' examples run as doctests (``--doctest-modules``); the user guide's code
blocks fit models for minutes, so they are checked statically instead: every skdcd name
they import exists, and every call of an skdcd class, method or function uses parameters
that exist (with literal values that the estimators accept). The prose must not promise
features: what is missing is stated in ``limitations.rst``, the roadmap is the tracker.
"""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import skdcd
from skdcd import CDEnergyEstimator, DCDEnergyEstimator

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted((DOCS / "user_guide").glob("*.rst")) + [DOCS / "index.rst",
                                                        DOCS / "install.rst"]
PAGES += [DOCS.parent / "README.md"]
# a feature described as coming, which once outlived its implementation (issue 27)
PROMISE = re.compile(r"\bplanned\b|not (yet )?implemented|coming soon|\bwill be added\b",
                     re.IGNORECASE)
ESTIMATORS = {"DCDEnergyEstimator": DCDEnergyEstimator, "CDEnergyEstimator": CDEnergyEstimator}


def python_blocks(text: str) -> list[str]:
    """The bodies of the ``.. code-block:: python`` directives of an rst page."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body = []
        for follow in lines[i + 1:]:
            if follow.strip() and not follow.startswith((" ", "\t")):
                break
            body.append(follow)
        indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        blocks.append("\n".join(b[indent:] for b in body))
    return blocks


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return inspect.Parameter.empty


def check_block(code: str) -> list[str]:
    """What in ``code`` does not match skdcd's API (an empty list when all of it does)."""
    problems, names = [], {}
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skdcd"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    problems.append(f"{node.module} has no {alias.name}")
                else:
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    methods = {name: getattr(DCDEnergyEstimator, name) for name in dir(DCDEnergyEstimator)
               if not name.startswith("_") and callable(getattr(DCDEnergyEstimator, name))}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        func = node.func
        if isinstance(func, ast.Name) and func.id in ESTIMATORS:
            cls = ESTIMATORS[func.id]
            valid = cls().get_params(deep=False)
            unknown = sorted(set(keywords) - set(valid))
            if unknown:
                problems.append(f"{func.id} has no parameters {unknown}")
                continue
            literal = {k: _literal(v) for k, v in keywords.items()}
            literal = {k: v for k, v in literal.items() if v is not inspect.Parameter.empty}
            try:
                cls(**literal)._validate_params()
            except (TypeError, ValueError) as exc:
                problems.append(f"{func.id}({literal}): {exc}")
            continue
        if isinstance(func, ast.Name) and func.id in names and callable(names[func.id]):
            target = names[func.id]
        elif isinstance(func, ast.Attribute) and func.attr in methods:
            target = methods[func.attr]
        else:
            continue
        signature = inspect.signature(target)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            unknown = sorted(set(keywords) - set(signature.parameters))
            if unknown:
                problems.append(f"{getattr(target, '__name__', target)} has no parameters "
                                f"{unknown}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documentation_promises_no_feature(page):
    hits = [line.strip() for line in page.read_text().splitlines() if PROMISE.search(line)]
    assert not hits, f"{page.name} describes features as coming: {hits}"


@pytest.mark.parametrize("page", [p for p in PAGES if p.suffix == ".rst"],
                         ids=lambda p: p.name)
def test_user_guide_code_uses_the_api_that_exists(page):
    for code in python_blocks(page.read_text()):
        assert not check_block(code), (page.name, check_block(code))


def test_the_api_check_finds_stale_code():
    # the check itself: each of these was true of an earlier version, or never was
    stale = {
        "from skdcd import EnergyFlow": "skdcd has no EnergyFlow",
        "est = DCDEnergyEstimator(noise_level=0.1)": "no parameters ['noise_level']",
        "est = CDEnergyEstimator(n_steps=0)": "n_steps",
        "est.denoise(X, noise_std=0.1, steps=3)": "denoise has no parameters ['steps']",
        "from skdcd.datasets import load_digits_images\nload_digits_images(size=8)":
            "load_digits_images has no parameters ['size']",
    }
    for code, problem in stale.items():
        assert any(problem in p for p in check_block(code)), (code, check_block(code))
    assert check_block("est = DCDEnergyEstimator(noise_std=(0.05, 0.5), max_iter=50)\n"
                       "est.sample(4, random_state=0)") == []
    assert hasattr(skdcd, "DCDEnergyEstimator")


def test_python_blocks_are_found_with_their_indentation():
    page = "Text\n\n.. code-block:: python\n\n   a = 1\n   if a:\n       b = 2\n\nAfter\n"
    assert python_blocks(page) == ["\na = 1\nif a:\n    b = 2\n"]
