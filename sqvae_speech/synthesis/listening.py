"""A static listening page: ``DIR/index.html`` with an audio player and a spectrogram per
converted item, to compare conversions by ear and by eye.

The page is plain HTML and CSS: no script, no framework, no network. Every audio file and
image is referenced by a path relative to the page, so the folder can be moved, zipped or
opened straight from disk (``file://``) in any browser. Items are laid out in one section
per group (the source speaker), one table row per source utterance and one column per
kind of output (the original, the vocoder alone, then one column per target speaker).
"""

from __future__ import annotations

import dataclasses
import html
import os
import posixpath
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ..errors import SQVAEError
from ..fileio import atomic_write_text
from ..textsafe import mpl_text

INDEX = "index.html"

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
p.notes { max-width: 60em; color: #444; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
td.row { font-family: monospace; white-space: nowrap; }
td img { display: block; width: 260px; margin-top: 4px; }
audio { width: 260px; }
.caption { font-size: 0.85em; color: #555; }
.empty { color: #aaa; }
"""


@dataclasses.dataclass(frozen=True)
class PageItem:
    """One cell of the page. Paths are relative to the page's folder (forward slashes)."""

    group: str  # section heading, e.g. the source speaker
    row: str  # row label, e.g. the source utterance
    column: str  # column label, e.g. the target speaker or "source"
    audio: str  # relative path of a wav file
    image: str | None = None  # relative path of a png/jpg (spectrogram), optional
    caption: str = ""
    alternatives: tuple[tuple[str, str], ...] = ()  # (label, relative wav path): the same item otherwise rendered


def _check_relative(path: str, out_dir: Path, what: str) -> str:
    """``path`` as a clean relative POSIX path inside ``out_dir``; else an SQVAEError."""
    p = path.replace(os.sep, "/")
    norm = posixpath.normpath(p)
    if not p or posixpath.isabs(p) or norm == ".." or norm.startswith("../") or ":" in p.split("/")[0]:
        raise SQVAEError(f"listening page: {what} '{path}' must be a relative path inside {out_dir}")
    if not (out_dir / norm).is_file():
        raise SQVAEError(f"listening page: {what} '{path}' does not exist in {out_dir}; write the file first")
    return norm


def _ordered(values: Sequence[str], first: Sequence[str]) -> list[str]:
    """Distinct ``values`` in first-seen order, with those listed in ``first`` in front."""
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def render_page(items: Sequence[PageItem], title: str, notes: str = "", columns: Sequence[str] = ()) -> str:
    """The HTML of a page (no file checks; see :func:`write_page`)."""
    e = html.escape
    cols = _ordered([it.column for it in items], columns)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>"]
    if notes:
        out.append(f'<p class="notes">{e(notes)}</p>')
    for group in _ordered([it.group for it in items], ()):
        in_group = [it for it in items if it.group == group]
        out.append(f"<h2>{e(group)}</h2>")
        out.append("<table>")
        out.append("<tr><th>utterance</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
        for row in _ordered([it.row for it in in_group], ()):
            cells = {it.column: it for it in in_group if it.row == row}
            out.append(f'<tr><td class="row">{e(row)}</td>')
            for c in cols:
                it = cells.get(c)
                if it is None:
                    out.append('<td class="empty">&ndash;</td>')
                    continue
                cell = [f'<audio controls preload="metadata" src="{e(quote(it.audio))}"></audio>']
                if it.caption:
                    cell.append(f'<div class="caption">{e(it.caption)}</div>')
                for label, alt in it.alternatives:
                    cell.append(f'<div class="caption">{e(label)}:</div>'
                                f'<audio controls preload="metadata" src="{e(quote(alt))}"></audio>')
                if it.image:
                    src = e(quote(it.image))
                    cell.append(f'<a href="{src}"><img src="{src}" alt="{e(f"{row} {c}")} spectrogram"></a>')
                out.append(f"<td>{''.join(cell)}</td>")
            out.append("</tr>")
        out.append("</table>")
    out.append(f'<p class="caption">written {e(time.strftime("%Y-%m-%d %H:%M"))} by sqvae-speech</p>')
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_page(
    out_dir: str | os.PathLike, items: Sequence[PageItem], title: str = "Voice conversion",
    notes: str = "", columns: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/index.html`` (atomically) for ``items`` and return its path.

    Every referenced file must already exist inside ``out_dir``; ``columns`` puts those
    column labels first, in that order (the rest follow in first-seen order).
    """
    out_dir = Path(out_dir)
    if not items:
        raise SQVAEError(f"listening page {out_dir / INDEX}: no items to show")
    checked = []
    for it in items:
        audio = _check_relative(it.audio, out_dir, "audio file")
        image = _check_relative(it.image, out_dir, "image") if it.image else None
        alts = tuple((label, _check_relative(a, out_dir, "audio file")) for label, a in it.alternatives)
        checked.append(dataclasses.replace(it, audio=audio, image=image, alternatives=alts))
    path = out_dir / INDEX
    atomic_write_text(path, render_page(checked, title, notes, columns))
    return path


def plot_spectrograms(path: str | os.PathLike, panels: Sequence[tuple[str, object]], title: str = "",
                      top_db: float = 80.0, diff_index: int | None = None) -> None:
    """Write a PNG (atomically) with one panel per ``(label, mel [n_mels, T])``, stacked.

    Scaled log-mels (``dB / top_db + 1``) are shown in dB on one shared scale (the loudest
    panel's top ``top_db`` dB); the panel at ``diff_index`` is a difference in dB (a
    diverging map around 0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..fileio import atomic_path

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.1 * len(panels) + 0.4), squeeze=False, sharex=True)
    try:
        # one dB scale for all spectrogram panels, so source and decoded compare by colour
        top = max(float(np.max(m)) for i, (_, m) in enumerate(panels) if i != diff_index)
        vmax = (top - 1.0) * top_db
        for i, (ax, (label, mel)) in enumerate(zip(axes[:, 0], panels)):
            m = np.asarray(mel, dtype=np.float64) * top_db
            if i == diff_index:
                lim = max(float(np.max(np.abs(m))), 1e-6)
                im = ax.imshow(m, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                im = ax.imshow(m - top_db, origin="lower", aspect="auto", cmap="magma", vmin=vmax - top_db, vmax=vmax,
                               interpolation="nearest")  # m - top_db: absolute dB of the mel magnitude
            ax.set_ylabel("mel band")
            ax.set_title(mpl_text(label), fontsize=9, loc="left")  # a name is text, not mathtext
            fig.colorbar(im, ax=ax, pad=0.01, label="dB")
        axes[-1, 0].set_xlabel("frame (10 ms)")
        if title:
            fig.suptitle(mpl_text(title), fontsize=10)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
