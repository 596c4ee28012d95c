"""Small Sphinx helpers for the skdcd documentation.

* :func:`figure_scraper` — a sphinx-gallery image scraper for matplotlib figures made
  without :mod:`matplotlib.pyplot`. :mod:`skdcd.plotting` builds its figures with
  :class:`matplotlib.figure.Figure` directly (no global state), which the stock
  ``"matplotlib"`` scraper cannot see: it only walks ``pyplot``'s figure list. This one
  saves every such figure that an example holds in a global variable, once.
* :func:`escape_trailing_underscores` — docstrings write shapes such as
  ``ndarray of shape (n_features_in_,)``; in reST a word ending in ``_`` is a link
  reference, so these become literals before docutils sees them.
* The ``skdcd-cli-help`` directive — the ``--help`` text of the ``skdcd`` command (or of
  one sub-command), produced from the real parser at build time so it never goes stale.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

_SCRAPED = "_skdcd_gallery_scraped"
_SHAPE_WITH_FITTED_NAME = re.compile(r"\((\w+_),\)")


def _figures_in(value: Any) -> list[Any]:
    from matplotlib.figure import Figure

    if isinstance(value, Figure):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, Figure)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, Figure)]
    return []


def figure_scraper(block: Any, block_vars: dict, gallery_conf: dict, **kwargs: Any) -> str:
    """Save the new, pyplot-less matplotlib figures held by an example's globals."""
    from sphinx_gallery.scrapers import figure_rst

    figures = []
    for value in list(block_vars["example_globals"].values()):
        for fig in _figures_in(value):
            managed = getattr(fig.canvas, "manager", None) is not None  # pyplot's own
            if not managed and not getattr(fig, _SCRAPED, False) and fig not in figures:
                figures.append(fig)
    paths = []
    for fig, image_path in zip(figures, block_vars["image_path_iterator"], strict=False):
        fig.savefig(str(PurePosixPath(image_path)), dpi=100, **kwargs)
        setattr(fig, _SCRAPED, True)
        paths.append(image_path)
    return figure_rst(paths, gallery_conf["src_dir"])


class CLIHelp(SphinxDirective):
    """``.. skdcd-cli-help:: [COMMAND]``: the help text of ``skdcd [COMMAND] --help``."""

    optional_arguments = 1
    option_spec = {"width": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        from skdcd.cli import build_parser

        width = str(self.options.get("width", 88))
        saved = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = width  # argparse wraps to the terminal width
        try:
            parser = build_parser()
            if self.arguments:
                sub = next(a for a in parser._actions if a.dest == "command")
                parser = sub.choices[self.arguments[0]]
            text = parser.format_help()
        finally:
            if saved is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = saved
        node = nodes.literal_block(text, text)
        node["language"] = "text"
        return [node]


def escape_trailing_underscores(app: Any, what: str, name: str, obj: Any, options: Any,
                                lines: list[str]) -> None:
    """Turn ``(name_,)`` in shape descriptions into ``(``name_``,)``, in place."""
    lines[:] = [_SHAPE_WITH_FITTED_NAME.sub(r"(``\1``,)", line) for line in lines]


def setup(app: Any) -> dict:
    """Register the directive and the docstring hook (the scraper is named in conf.py)."""
    app.add_directive("skdcd-cli-help", CLIHelp)
    app.connect("autodoc-process-docstring", escape_trailing_underscores, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
