"""A single self-contained HTML page summarising a comparison: table, figures, run links, notes.

Everything the page shows travels inside the file (PNG figures as base64 ``data:`` URIs, inline
CSS, no JavaScript), so it can be logged as one MLflow artifact, mailed, or opened offline. A
Content-Security-Policy in the page makes browsers refuse anything external that slips in.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

import markdown
import pandas as pd

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Images only from data: URIs, styles only inline, nothing else (scripts, fonts, frames) at all.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Run links point at the tracking UI; anything else (javascript:, data:, file:) has no business there.
_LINK_SCHEMES = {"http", "https", ""}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1.5rem; color: #1f2328; background: #fff; line-height: 1.45; }
h1 { font-size: 1.7rem; border-bottom: 2px solid #d0d7de; padding-bottom: .4rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; }
table.summary { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
table.summary th, table.summary td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: right; }
table.summary th { background: #f6f8fa; }
table.summary td:first-child, table.summary th:first-child { text-align: left; }
table.summary tbody tr:nth-child(even) { background: #fafbfc; }
.table-wrap { overflow-x: auto; }
table.summary { width: 100%; }
table.summary th { overflow-wrap: anywhere; hyphens: auto; }  /* long column names wrap at the page's width */
.markdown table { border-collapse: collapse; font-size: .9rem; }
.markdown th, .markdown td { border: 1px solid #d0d7de; padding: .25rem .5rem; }
.markdown th { background: #f6f8fa; }
.markdown code { background: #f6f8fa; padding: 0 .2rem; }
figure { margin: 0 0 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
ul.runs li, ul.notes li { margin: .2rem 0; }
a { color: #0969da; }
pre { white-space: pre-wrap; background: #f6f8fa; border: 1px solid #d0d7de; padding: .8rem; font-size: .85rem; }
"""


def _png_data_uri(name: str, png: bytes) -> str:
    if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == PNG_SIGNATURE:
        raise ValueError(f"figure {name!r} is not PNG bytes; render it with figures.figure_png()")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _checked_link(label: str, url: str) -> str:
    if urlsplit(url).scheme.lower() not in _LINK_SCHEMES:
        raise ValueError(f"run link {label!r}: only http(s) or relative URLs are allowed, got {url!r}")
    return url


def markdown_html(text: str) -> str:
    """A markdown document (a model card) as HTML, with Python-Markdown and its tables; any raw HTML
    in the text is shown as text, never passed into the page."""
    renderer = markdown.Markdown(extensions=["tables"], output_format="html")
    renderer.preprocessors.deregister("html_block")
    renderer.inlinePatterns.deregister("html")
    return f'<div class="markdown">{renderer.convert(text)}</div>'


def _table_html(table: pd.DataFrame) -> str:
    # Four significant digits keep metrics readable and print whole-number floats (epochs) bare.
    return table.to_html(index=False, escape=True, na_rep="", border=0, classes="summary",
                         float_format=lambda value: f"{value:.4g}")


def build_html_report(*, title: str, summary_table: pd.DataFrame, figures: dict[str, bytes],
                      run_links: dict[str, str], notes: Iterable[str] = (),
                      documents: dict[str, str] | None = None, tables: dict[str, pd.DataFrame] | None = None) -> str:
    """The report page as one HTML string with no external resources.

    Args:
        title: page title and top heading.
        summary_table: the comparison table, one row per configuration.
        figures: heading -> PNG bytes (see ``figures.figure_png``), shown in this order.
        run_links: label -> URL of the run in the tracking UI.
        notes: free-text remarks (caveats, skipped configurations), shown as a list.
        documents: heading -> markdown (a model card), rendered as HTML (raw HTML in it escaped).
        tables: heading -> a further table (the champion's cross-dataset validation), after the summary.

    Returns:
        The HTML document; all text is escaped.

    Raises:
        ValueError: a figure that is not PNG, or a run link that is not http(s) or relative.
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        '<section id="summary">',
        "<h2>Summary</h2>",
        f'<div class="table-wrap">{_table_html(summary_table)}</div>',
        "</section>",
    ]
    for heading, table in (tables or {}).items():
        parts += ['<section class="table">', f"<h2>{esc(heading)}</h2>",
                  f'<div class="table-wrap">{_table_html(table)}</div>', "</section>"]
    if figures:
        parts.append('<section id="figures">')
        for name, png in figures.items():
            parts += ["<figure>", f"<h2>{esc(name)}</h2>",
                      f'<img src="{_png_data_uri(name, png)}" alt="{esc(name)}">', "</figure>"]
        parts.append("</section>")
    if run_links:
        parts += ['<section id="runs">', "<h2>Runs</h2>", '<ul class="runs">']
        for label, url in run_links.items():
            parts.append(f'<li><a href="{esc(_checked_link(label, url))}">{esc(label)}</a></li>')
        parts += ["</ul>", "</section>"]
    for heading, text in (documents or {}).items():
        parts += ['<section class="document">', f"<h2>{esc(heading)}</h2>", markdown_html(text), "</section>"]
    notes = list(notes)
    if notes:
        parts += ['<section id="notes">', "<h2>Notes</h2>", '<ul class="notes">']
        parts += [f"<li>{esc(note)}</li>" for note in notes]
        parts += ["</ul>", "</section>"]
    parts += ["</body>", "</html>", ""]
    log.debug("report %r: %d figures, %d run links, %d notes", title, len(figures), len(run_links), len(notes))
    return "\n".join(parts)
