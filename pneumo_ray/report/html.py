"""report.html: the sections with their figures (relative links to figures/*.png, each linking to
its SVG), tables and notes; one file plus its figures/ folder, readable offline."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1250px; margin: 0 auto; padding: 1em 2em 4em; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 13px; }
.notes { background: #fff6e0; border-left: 4px solid #e8a400; padding: 0.6em 1em; margin: 1em 0; }
.notes li { margin: 0.2em 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 0.8em 1.5em 0.8em 0; display: inline-block; vertical-align: top; width: calc(50% - 1.6em); }
figure.wide { width: 100%; margin-right: 0; }
.row figure { width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row > * { flex: 1 1 420px; min-width: 0; }
ul.verdicts li { margin: 0.3em 0; }
.scroll { overflow-x: auto; }
"""


# figures with several panels side by side: the page's full width (the others go two to a line)
WIDE = {"learning_curves", "optimisation_history", "importance", "params", "arm_metrics", "test_examples", "gradcam"}


@dataclass
class Section:
    title: str
    intro: str = ""
    # ("figure", name, caption, formats) | ("table", title, frame) | ("list", title, items)
    # | ("row", [blocks]) | ("stack", [blocks])
    blocks: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _table(title: str, frame: pd.DataFrame) -> str:
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    if frame is None or frame.empty:
        return head + "<p><em>nothing to show</em></p>"
    return head + '<div class="scroll">' + frame.to_html(index=False, border=0, na_rep="–", escape=True) + "</div>"


def _block(b) -> str:
    kind = b[0]
    if kind == "figure":
        _, name, caption, formats = b
        big = "svg" if "svg" in formats else "png"
        links = " · ".join(f'<a href="figures/{name}.{ext}">{ext.upper()}</a>' for ext in formats)
        cls = ' class="wide"' if name in WIDE else ""
        img = f'<img src="figures/{name}.png" alt="{html.escape(name)}">'
        return (
            f'<figure{cls}><a href="figures/{name}.{big}">{img}</a>'
            f"<figcaption>{html.escape(caption)} {links}</figcaption></figure>"
        )
    if kind == "table":
        return _table(b[1], b[2])
    if kind == "list":
        items = "".join(f"<li>{html.escape(i)}</li>" for i in b[2])
        return (f"<h3>{html.escape(b[1])}</h3>" if b[1] else "") + f'<ul class="verdicts">{items}</ul>'
    if kind == "row":  # side by side (wrapping on narrow screens)
        return '<div class="row">' + "".join(f"<div>{_block(x)}</div>" for x in b[1]) + "</div>"
    if kind == "stack":  # one below the other (e.g. a row's second column)
        return "".join(_block(x) for x in b[1])
    raise ValueError(kind)


def _notes(notes: list[str], title: str = "") -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f'<div class="notes">{f"<strong>{html.escape(title)}</strong>" if title else ""}<ul>{items}</ul></div>'


def render(title: str, meta: list[str], notes: list[str], sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        body.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
        if s.intro:
            body.append(f"<p>{html.escape(s.intro)}</p>")
        body.append(_notes(s.notes))
        body.extend(_block(b) for b in s.blocks)
    meta_html = "<br>".join(html.escape(m) for m in meta)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1><p class="meta">{meta_html}</p>
{_notes(notes, "Missing or skipped")}
<ol>{toc}</ol>
{"".join(body)}
</body></html>
"""
