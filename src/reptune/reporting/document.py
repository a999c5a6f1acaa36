"""The report document: number formats, blocks, and the Markdown and HTML renderers.

A report is a list of blocks (headings, paragraphs, bullet lists, tables, figures, code) built
once by the section builders; :func:`to_markdown` and :func:`to_html` render the same list, so
both documents always say the same thing. :class:`Plan` collects the blocks and the figure jobs
(drawn later by the caller, each into ``figures/NAME.png``).

The number formats (:func:`fmt`, :func:`fmt_p`, :func:`fmt_ci`) are the one set every reptune
report uses: the experiment report, the layer scan and the discovery report.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIGURES_DIR = "figures"


# ----------------------------------------------------------------------------- number formatting


def fmt(x: Any, spec: str = ".3f", *, nan: str | None = None) -> str:
    """The one number format of the reports: floats through ``spec`` (3 decimals unless told),
    ints as ints, booleans as ``yes``/``no``, None as ``-``, anything else as ``str``. A NaN goes
    through ``spec`` too (``nan``) unless ``nan`` gives its text (the claims' evidence writes ``-``)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return nan if nan is not None and math.isnan(x) else format(x, spec)
    return str(x)


def fmt_p(p: Any) -> str:
    """A p-value with 3 significant digits, ``<0.001`` below 0.001, ``-`` for None."""
    if p is None:
        return "-"
    p = float(p)
    if math.isnan(p):
        return "nan"
    if p < 0.001:
        return "<0.001"
    return f"{p:#.3g}"


def fmt_ci(low: Any, high: Any) -> str:
    """``[low, high]`` through :func:`fmt`, or ``-`` when the interval is absent."""
    if low is None and high is None:
        return "-"
    return f"[{fmt(low)}, {fmt(high)}]"


def short(text: Any, n: int = 60) -> str:
    """``text`` on one line, cut to ``n`` characters (the last one an ellipsis)."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------- blocks

Span = tuple[str, str]  # (style, text); style: "" plain, "b" bold, "c" code, "i" italic


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    spans: list[Span]


@dataclass
class Bullets:
    items: list[list[Span]]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    rel: str  # path relative to the run directory, always figures/NAME.png
    caption: str


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class FigureJob:
    """A figure to draw: ``draw(RUN/rel)`` writes the PNG."""

    rel: str
    draw: Callable[[Path], Any]


@dataclass
class Plan:
    """The blocks of a report and the figures they reference, in document order."""

    blocks: list[Any] = field(default_factory=list)
    jobs: list[FigureJob] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(blocks)

    def para(self, *spans: Span | str) -> None:
        self.blocks.append(Paragraph([("", s) if isinstance(s, str) else s for s in spans]))

    def section(self, title: str, content: Any) -> bool:
        """Open a level-2 section ``title``; when ``content`` (what the section shows) is empty, say
        "Not run." under the heading and return ``False`` (the builder then stops)."""
        self.add(Heading(2, title))
        if not content:
            self.para("Not run.")
            return False
        return True

    def figure(self, stem: str, caption: str, draw: Callable[[Path], Any]) -> None:
        """Reference ``figures/STEM.png`` here (``STEM-2`` ... when the name is taken) and queue its drawing."""
        base = slug(stem)
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}-{k}"
        self.used.add(name)
        rel = f"{FIGURES_DIR}/{name}.png"
        self.jobs.append(FigureJob(rel, draw))
        self.blocks.append(Figure(rel, caption))


def slug(text: str) -> str:
    """``text`` as a file-name stem / HTML id: runs outside ``[A-Za-z0-9_.-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "x"


# ----------------------------------------------------------------------------- Markdown

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    """Plain text for Markdown: anything that could open an HTML tag is escaped, one line."""
    return _TAG_START.sub("&lt;", " ".join(str(text).splitlines()))


def _md_code(text: str) -> str:
    text = " ".join(str(text).splitlines())
    ticks = "`"
    while ticks in text:
        ticks += "`"
    pad = " " if text.startswith("`") or text.endswith("`") or ticks != "`" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _md_spans(spans: list[Span], cell: bool = False) -> str:
    out = []
    for style, text in spans:
        if style == "c":
            piece = _md_code(text)
        elif style == "b":
            piece = f"**{_md_text(text.strip())}**" if text.strip() else ""
        elif style == "i":
            piece = f"*{_md_text(text.strip())}*" if text.strip() else ""
        else:
            piece = _md_text(text)
        out.append(piece.replace("|", "\\|") if cell else piece)
    return "".join(out)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|")


def _md_block(block: Any, failed: dict[str, str]) -> str | None:
    if isinstance(block, Heading):
        return "#" * block.level + " " + _md_text(block.text)
    if isinstance(block, Paragraph):
        return _md_spans(block.spans)
    if isinstance(block, Bullets):
        return "\n".join("- " + _md_spans(item) for item in block.items)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        if block.rel in failed:
            return f"*Figure {_md_code(block.rel)} could not be drawn: {_md_text(failed[block.rel])}*"
        return f"![{_md_text(block.caption).replace(']', ')')}]({block.rel})"
    if isinstance(block, Code):
        fence = "```"
        while fence in block.text:
            fence += "`"
        return f"{fence}{block.lang}\n{block.text}\n{fence}"
    return None


def to_markdown(blocks: list[Any], failed: dict[str, str] | None = None) -> str:
    """The blocks as Markdown; figures by relative path (``failed``: ``{rel: why}`` of figures not drawn)."""
    failed = failed or {}
    parts = [text for text in (_md_block(block, failed) for block in blocks) if text is not None]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right;white-space:nowrap}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
code{background:#f6f8fa;padding:.1em .3em;border-radius:4px;font-size:.9em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;border-radius:6px}pre code{padding:0}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#57606a;font-size:.85em}
.missing{color:#cf222e}
""".strip()


def _html_spans(spans: list[Span]) -> str:
    tags = {"b": "strong", "c": "code", "i": "em"}
    return "".join(f"<{tags[s]}>{html.escape(t)}</{tags[s]}>" if s in tags else html.escape(t) for s, t in spans)


def _html_figure(block: Figure, run_dir: Path, failed: dict[str, str]) -> str:
    png = run_dir / block.rel
    if block.rel in failed or not png.is_file():
        reason = failed.get(block.rel, "file missing")
        return f'<p class="missing">Figure {html.escape(block.rel)} could not be drawn: {html.escape(reason)}</p>'
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    caption = html.escape(block.caption)
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'


def _html_block(block: Any, run_dir: Path, failed: dict[str, str]) -> str | None:
    if isinstance(block, Heading):
        return f'<h{block.level} id="{slug(block.text).lower()}">{html.escape(block.text)}</h{block.level}>'
    if isinstance(block, Paragraph):
        return f"<p>{_html_spans(block.spans)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{_html_spans(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    if isinstance(block, Figure):
        return _html_figure(block, run_dir, failed)
    if isinstance(block, Code):
        return f'<pre><code class="language-{html.escape(block.lang)}">{html.escape(block.text)}</code></pre>'
    return None


def to_html(blocks: list[Any], run_dir: Path, title: str, failed: dict[str, str]) -> str:
    """The blocks as one self-contained HTML page: figures from ``run_dir`` embedded as base64, inline CSS, no scripts."""
    body = [text for text in (_html_block(block, run_dir, failed) for block in blocks) if text is not None]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
