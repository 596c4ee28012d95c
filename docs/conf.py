"""Sphinx configuration of the skdcd documentation.

Build with ``make docs`` (executes the gallery) or ``make docs-noplot`` (does not), both
from the repository root; they run ``sphinx-build -W --keep-going -b html docs
docs/_build/html``, so any warning fails the build.

Intersphinx (links into the scikit-learn, NumPy, PyTorch, Python and matplotlib docs)
needs the network to fetch the inventories and would warn offline, which ``-W`` turns
into an error. It is therefore off unless the environment variable
``SKDCD_DOCS_INTERSPHINX=1`` is set; without it, references to those projects render as
plain code, and the build never touches the network.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "sphinxext"))  # skdcd_docs: gallery figure scraper, CLI help
sys.path.insert(0, str(HERE.parent))  # the checkout, in case skdcd is not installed

import skdcd  # noqa: E402

# -- project -------------------------------------------------------------------------
project = "skdcd"
author = "skdcd developers"
copyright = f"{time.strftime('%Y')}, {author}"  # noqa: A001
version = release = skdcd.__version__

# -- extensions ----------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "skdcd_docs",
]

INTERSPHINX = os.environ.get("SKDCD_DOCS_INTERSPHINX", "0") == "1"
if INTERSPHINX:
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "sklearn": ("https://scikit-learn.org/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
    }
    intersphinx_timeout = 10

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/sg_execution_times.rst",
                    "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "literal"  # `x` renders as code, as in numpydoc docstrings
pygments_style = "sphinx"
add_function_parentheses = False

# -- autodoc / autosummary / numpydoc ------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_inherit_docstrings = True
numpydoc_show_class_members = False  # the class pages list members themselves
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_validation_checks: set[str] = set()  # sphinxext/api_audit.py lists EX01

# -- math ----------------------------------------------------------------------------
# MathJax renders in the reader's browser; the build itself needs no network.

# -- sphinx-gallery ------------------------------------------------------------------
# The gallery runs at build time; `make docs-noplot` passes -D plot_gallery=0 to skip it.
# Torch threads: the examples are sized for 2 CPU cores, about a minute each at most.
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": "/plot_",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skdcd",),
    "backreferences_dir": "gen_modules/backreferences",
    "image_scrapers": ("matplotlib", "skdcd_docs.figure_scraper"),
    "capture_repr": (),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "show_memory": False,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "min_reported_time": 1,
    "download_all_examples": False,
}

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skdcd {release}"
html_static_path = ["_static"]
html_css_files = ["skdcd.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_context = {"default_mode": "light"}

# matplotlib (gallery) must never try to open a window
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", category=UserWarning,
                        message="Matplotlib is currently using agg")
