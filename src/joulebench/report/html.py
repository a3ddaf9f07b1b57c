"""HTML only: escaping, number formatting, tables, inlined figures, the page around the sections.

Cells and section parts are HTML already; escape text with ``esc`` before it goes in.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits; nan/None as an em dash."""
    if x is None:
        return "&mdash;"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if not math.isfinite(f):
        return "&mdash;"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}g}"


def pct(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "&mdash;"
    return f"{f * 100:.1f} %" if math.isfinite(f) else "&mdash;"


def ci(lo: Any, hi: Any) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None and \
        all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)) else "&mdash;"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text with ``esc`` before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def img(path: Path | None, alt: str) -> str:
    """A figure with the PNG inlined as base64 (the report needs no other file); "" without one."""
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    pdf = Path(path).with_suffix(".pdf").name
    return (f'<figure><img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{esc(alt)} (also <code>plots/{esc(pdf)}</code>)</figcaption></figure>')


def bullets(items: Iterable[str]) -> str:
    return '<ul class="notes">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:2px solid #1f6fb4;padding-bottom:.2rem}
h3{font-size:1.05rem;margin-top:1.4rem}
.meta{color:#555;font-size:.9rem}
.headline{background:#e8f1fa;border-left:6px solid #1f6fb4;padding:.9rem 1.1rem;font-size:1.12rem;margin:1rem 0}
.notice{background:#fff4e0;border-left:6px solid #e69500;padding:.6rem 1rem;margin:.8rem 0}
.bad{color:#b00020;font-weight:600}.good{color:#1a7f37}
.scroll{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:.83rem;background:#fff}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f6;position:sticky;top:0}
tr.front td{background:#eef7ee}tr:hover td{background:#f5f9ff}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}img.plot{max-width:100%;height:auto;border:1px solid #e3e3e3;background:#fff}
figcaption{font-size:.8rem;color:#666}
nav{font-size:.88rem;margin:.6rem 0}nav a{margin-right:.8rem}
code{background:#f0f0f0;padding:0 .2rem;border-radius:3px}
ul.notes li{margin:.25rem 0}
details.flag{margin:.3rem 0}details.flag summary{cursor:pointer}
"""


def page(title: str, parts: Sequence[str]) -> str:
    """The whole document: inline CSS, no script, no external resource."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>joulebench: {esc(title)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(parts) + "</main></body></html>")
