"""The report's files: ``report.json`` (every number), ``report.md`` and ``report.html``
(the same tables, the HTML with its figures; it opens from disk) and the PNG figures:
``usage.png`` (code usage per experiment), ``phones_<name>.png`` (phone x code
heatmaps), ``curves.png`` (training curves).

Both pages are rendered from one list of blocks, so they cannot disagree. Names
(experiments, systems, paths) are text on both: HTML-escaped in ``report.html``, escaped
Markdown in ``report.md`` (:func:`sqvae_speech.textsafe.md_text`), mathtext-escaped in the
figures; links and image sources are percent-encoded relative paths.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..fileio import atomic_path, atomic_write_json, atomic_write_text
from ..textsafe import md_text, mpl_text

Block = tuple[Any, ...]  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", src, alt) | ("links", [(text, href)])


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _resynth(report: dict[str, Any], name: str, vocoder: str, metric: str) -> Any:
    for r in report.get("resynthesis", []):
        if r["model"] == name and r["vocoder"] == vocoder:
            return r["mean"].get(metric)
    return None


# (label, getter(report, experiment row), format, better: "low" | "high" | None)
Row = tuple[str, Callable[[dict[str, Any], dict[str, Any]], Any], str, str | None]
QUALITY = (("mcd_db", "MCD (dB)", ".2f", "low"), ("f0_rmse_cents", "F0 RMSE (cents)", ".0f", "low"),
           ("vuv_error", "V/UV error", ".3f", "low"), ("pesq_wb", "PESQ (wb)", ".2f", "high"), ("stoi", "STOI", ".3f", "high"))


def summary_rows(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        ("dB^2 MSE (held-out)", lambda r, e: _get(e, "results", "mse_db2"), ".2f", "low"),
        ("codes used", lambda r, e: _get(e, "results", "used_codes") if _get(e, "results", "num_codes") else None,
         "d", "high"),
        ("codebook size", lambda r, e: _get(e, "results", "num_codes"), "d", None),
        ("set perplexity", lambda r, e: _get(e, "results", "set_perplexity"), ".1f", "high"),
        ("bitrate (bits/s)", lambda r, e: _get(e, "results", "bitrate"), ".1f", None),
        ("ABX within, z_q (%)", lambda r, e: _get(e, "abx", "z_q", "within"), ".2f", "low"),
        ("ABX across, z_q (%)", lambda r, e: _get(e, "abx", "z_q", "across"), ".2f", "low"),
        ("ABX within, z (%)", lambda r, e: _get(e, "abx", "z", "within"), ".2f", "low"),
        ("ABX across, z (%)", lambda r, e: _get(e, "abx", "z", "across"), ".2f", "low"),
        ("phone purity", lambda r, e: _get(e, "units", "phone_purity"), ".3f", "high"),
        ("code purity", lambda r, e: _get(e, "units", "code_purity"), ".3f", "high"),
        ("PNMI", lambda r, e: _get(e, "units", "pnmi"), ".3f", "high"),
        ("code entropy per phone (bits)", lambda r, e: _get(e, "units", "code_entropy_bits"), ".2f", None),
        ("mean segment (ms)", lambda r, e: _get(e, "units", "mean_segment_ms"), ".1f", None),
        ("speaker probe from z (accuracy)", lambda r, e: _get(e, "probe", "z", "accuracy"), ".3f", None),
        ("speaker probe from z_q (accuracy)", lambda r, e: _get(e, "probe", "z_q", "accuracy"), ".3f", None),
        ("speaker probe: chance", lambda r, e: _get(e, "probe", "z_q", "chance"), ".3f", None),
    ]
    for voc in report.get("options", {}).get("vocoders", ()):
        for key, label, spec, better in QUALITY:
            rows.append((f"reconstruction through {voc}: {label}",
                         lambda r, e, v=voc, k=key: _resynth(r, e["name"], v, k), spec, better))
    rows += [
        ("conversion: similarity to target", lambda r, e: _get(e, "conversion", "sim_target"), ".3f", "high"),
        ("conversion: similarity to source", lambda r, e: _get(e, "conversion", "sim_source"), ".3f", "low"),
        ("conversion: closer to target", lambda r, e: _closer(e), "s", None),
        ("conversion: |F0 - target median| (semitones)", lambda r, e: _get(e, "conversion", "mean_abs_semitones"), ".2f", "low"),
    ]
    return rows


def _closer(e: dict[str, Any]) -> str | None:
    c = e.get("conversion")
    return None if not c else f"{c['closer']}/{c['total']} ({100 * c['closer_share']:.0f} %)"


def summary_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    exps = report["experiments"]
    header = ["metric", *(e["name"] for e in exps)]
    rows = []
    for label, get, spec, better in summary_rows(report):
        vals = [get(report, e) for e in exps]
        nums = [v for v in vals if isinstance(v, (int, float)) and np.isfinite(v)]
        best = (min(nums) if better == "low" else max(nums)) if better and len(nums) > 1 and len(set(nums)) > 1 else None
        rows.append([label, *(f"**{_fmt(v, spec)}**" if best is not None and v == best else _fmt(v, spec) for v in vals)])
    return header, rows


def resynthesis_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "utterances", *(label for _, label, _, _ in QUALITY)]
    rows = [[r["system"], str(r["utterances"]), *(_fmt(r["mean"].get(k), spec) for k, _, spec, _ in QUALITY)]
            for r in report.get("resynthesis", [])]
    return header, rows


# (label, getter of one experiment row, format) of the table over seeds
SEED_COLUMNS = (
    ("dB^2 MSE", lambda e: _get(e, "results", "mse_db2"), ".2f"),
    ("codes used", lambda e: _get(e, "results", "used_codes") if _get(e, "results", "num_codes") else None, ".0f"),
    ("PNMI", lambda e: _get(e, "units", "pnmi"), ".3f"),
    ("probe z_q", lambda e: _get(e, "probe", "z_q", "accuracy"), ".3f"),
    ("closer to target", lambda e: _get(e, "conversion", "closer_share"), ".2f"),
    ("similarity to target", lambda e: _get(e, "conversion", "sim_target"), ".3f"),
    ("similarity to source", lambda e: _get(e, "conversion", "sim_source"), ".3f"),
)


def seed_groups(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Experiments named ``<setup>_seed<N>``, grouped by setup (only setups with several seeds)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in report["experiments"]:
        m = re.fullmatch(r"(.+)_seed(\d+)", e["name"])
        if m:
            groups.setdefault(m.group(1), []).append(e)
    return {k: v for k, v in groups.items() if len(v) > 1}


def seed_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Mean +- sample standard deviation over seeds of the key figures, one row per setup."""
    rows = []
    for name, exps in seed_groups(report).items():
        cells = [name, str(len(exps))]
        for _, get, spec in SEED_COLUMNS:
            vals = [v for v in (get(e) for e in exps) if isinstance(v, (int, float)) and np.isfinite(v)]
            if not vals:
                cells.append("n/a")
            else:
                std = f" +- {format(float(np.std(vals, ddof=1)), spec)}" if len(vals) > 1 else ""
                cells.append(f"{format(float(np.mean(vals)), spec)}{std}")
        rows.append(cells)
    return ["setup", "seeds", *(c[0] for c in SEED_COLUMNS)], rows


# ----------------------------------------------------------------------------- figures


def plot_usage(report: dict[str, Any], path: Path) -> bool:
    """Code usage on the held-out set, codes sorted by count, one panel per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = [e for e in report["experiments"] if e.get("code_counts")]
    if not exps:
        return False
    fig, axes = plt.subplots(1, len(exps), figsize=(4.2 * len(exps), 3.2), squeeze=False)
    for ax, e in zip(axes[0], exps):
        counts = np.sort(np.asarray(e["code_counts"]))[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(counts.size), np.maximum(counts, 0.5), width=1.0, color="tab:blue")
        ax.set_yscale("log")
        ax.set_ylim(0.8, max(2, counts.max()) * 1.5)
        ax.set_title(mpl_text(f"{e['name']}: {used} of {counts.size} codes used"), fontsize=9)
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("frames")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def plot_phone_heatmap(uq: Any, title: str, path: Path, max_phones: int = 40) -> None:
    """P(phone | code) over the used codes; codes ordered by their most likely phone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(uq.counts, dtype=np.float64)  # [P, K]
    phones = np.argsort(-counts.sum(1))[:max_phones]
    used = np.flatnonzero(counts.sum(0) > 0)
    cond = counts[:, used] / counts[:, used].sum(0, keepdims=True)
    rank = {p: i for i, p in enumerate(phones)}
    top = cond.argmax(0)
    order = sorted(range(used.size), key=lambda j: (rank.get(int(top[j]), len(rank)), -cond[top[j], j]))
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.03 * used.size), 0.2 * phones.size + 1.6))
    im = ax.imshow(cond[phones][:, order], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(phones.size), [mpl_text(uq.phones[p]) for p in phones], fontsize=7)
    ax.set_xlabel(f"{used.size} used codes, grouped by their most likely phone")
    ax.set_title(mpl_text(title), fontsize=9)
    fig.colorbar(im, ax=ax, label="P(phone | code)", fraction=0.03)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


# ----------------------------------------------------------------------------- pages


def blocks(report: dict[str, Any], out: Path, figures: dict[str, str]) -> list[Block]:
    exps = report["experiments"]
    opts = report["options"]
    b: list[Block] = [("h", 1, "sqvae-speech report")]
    b.append(("p", "Experiments: " + "; ".join(f"{e['name']} ({e['variant']}, step {e['step']}, {e['exp']})" for e in exps)
              + f". Held-out data: {opts['data']} (features {opts['feats']}). Written in {report['seconds']} s."))
    if seed_groups(report):
        header, rows = seed_table(report)
        b += [("h", 2, "Over seeds"), ("table", header, rows),
              ("p", ("Mean +- sample standard deviation over the runs that differ only by seed (named <setup>_seed<N>); "
                    "closer to target: the share of conversions more similar to their target than to their source."))]
    header, rows = summary_table(report)
    b += [("h", 2, "All metrics"), ("table", header, rows),
          ("p", ("Bold: the best value of a row where lower or higher is better. The speaker probe is a logistic "
                "regression predicting the speaker from single frames of held-out utterances (trained on half of each "
                "speaker's utterances, tested on the other half): lower means less speaker information in the codes. "
                "Similarity is the cosine between Resemblyzer embeddings of a conversion and the mean embedding of the "
                "speaker's held-out recordings."))]
    if report.get("resynthesis"):
        header, rows = resynthesis_table(report)
        b += [("h", 2, "Resynthesis of held-out recordings"), ("table", header, rows),
              ("p", (f"Against the recording, on {len(report['resynthesis_utterances'])} held-out utterances: each "
                    "vocoder alone on the recording's log-mel, and each model's reconstruction (decoded as the "
                    "utterance's own speaker) through each vocoder. MCD on speech frames, F0 RMSE over frames voiced in "
                    "both, V/UV error over all frames, wide-band PESQ, STOI."))]
    probe = [e for e in exps if e.get("probe")]
    if probe:
        rows = [[e["name"], *(f"{_fmt(e['probe'][k]['accuracy'], '.3f')} (shuffled {_fmt(e['probe'][k]['shuffled_accuracy'], '.3f')})"
                              for k in ("z", "z_q")), _fmt(e["probe"]["z_q"]["chance"], ".3f"),
                 str(e["probe"]["z_q"]["test_frames"])] for e in probe]
        b += [("h", 2, "Speaker probe"), ("table", ["experiment", "from z", "from z_q", "chance", "test frames"], rows),
              ("p", ("In brackets: the same probe trained on speaker labels shuffled across utterances, a control that "
                    "should land near chance."))]
    if opts.get("curve"):
        from .curve import curve_table

        header, rows = curve_table(report)
        b += [("h", 2, "Against training steps"), ("table", header, rows),
              ("p", ("The same run at each checkpoint: held-out dB^2 MSE, the reconstruction through the first vocoder "
                    "of the resynthesis table, and its conversions (figure steps.png)."))]
    conv = [e for e in exps if e.get("conversion")]
    if conv:
        rows = [[e["name"], e["conversion"]["vocoder"] or "", _fmt(e["conversion"]["sim_target"], ".3f"),
                 _fmt(e["conversion"]["sim_source"], ".3f"), _closer(e) or "",
                 _fmt(e["conversion"]["within_1_semitone"], ".2f")] for e in conv]
        b += [("h", 2, "Voice conversion"),
              ("table", ["experiment", "vocoder", "similarity to target", "similarity to source", "closer to target",
                         "median F0 within 1 semitone of target"], rows)]
        links = [(f"{e['name']}: listening page", os.path.relpath(e["conversion"]["page"], out))
                 for e in conv if e["conversion"].get("page")]
        if links:
            b.append(("links", links))
    if figures:
        b.append(("h", 2, "Figures"))
        for src, alt in figures.items():
            b.append(("img", src, alt))
    return b


def _md_cell(s: str) -> str:
    """A table cell as Markdown text; ``**x**`` (a best value) stays bold."""
    return f"**{md_text(s[2:-2])}**" if len(s) > 4 and s.startswith("**") and s.endswith("**") else md_text(s)


def _url(path: str) -> str:
    """A relative path as a link target: percent-encoded (no ``:`` scheme, no quote,
    space or bracket can end or change it), ``/`` kept."""
    return quote(path.replace(os.sep, "/"))


def render_md(bl: list[Block]) -> str:
    out = []
    for blk in bl:
        kind = blk[0]
        if kind == "h":
            out.append("#" * blk[1] + " " + md_text(blk[2]))
        elif kind == "p":
            out.append(md_text(blk[1]))
        elif kind == "table":
            header, rows = blk[1], blk[2]
            out.append("\n".join(["| " + " | ".join(map(_md_cell, header)) + " |",
                                  "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
                                  *("| " + " | ".join(map(_md_cell, r)) + " |" for r in rows)]))
        elif kind == "img":
            out.append(f"![{md_text(blk[2])}]({_url(blk[1])})")
        elif kind == "links":
            out.append("\n".join(f"- [{md_text(t)}]({_url(h)})" for t, h in blk[1]))
    return "\n\n".join(out) + "\n"


def _html_cell(s: str) -> str:
    e = html.escape(s)
    return f"<b>{e[2:-2]}</b>" if e.startswith("**") and e.endswith("**") else e


def render_html(bl: list[Block], title: str) -> str:
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           ("<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px}"
           "td{text-align:right}td:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}"
           "</style></head><body>")]
    for blk in bl:
        kind = blk[0]
        if kind == "h":
            out.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(blk[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in blk[1])
            body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in blk[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(f"<img src='{html.escape(_url(blk[1]))}' alt='{html.escape(blk[2])}'>")
        elif kind == "links":
            out.append("<ul>" + "".join(f"<li><a href='{html.escape(_url(h))}'>{html.escape(t)}</a></li>" for t, h in blk[1])
                       + "</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> None:
    """Figures, ``report.json``, ``report.md`` and ``report.html`` into ``out_dir``."""
    from ..cli.compare import plot_curves, read_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    if plot_usage(report, out / "usage.png"):
        figures["usage.png"] = "code usage on the held-out set"
    for e in report["experiments"]:
        uq = e.pop("_unit_quality", None)
        if uq is not None:
            name = f"phones_{_file_name(e['name'])}.png"
            plot_phone_heatmap(uq, f"{e['name']}: P(phone | code), PNMI {uq.pnmi:.3f}", out / name)
            figures[name] = f"phone x code heatmap, {e['name']}"
    if report["options"].get("curve"):
        from .curve import plot_curve

        plot_curve(report, out / "steps.png")
        figures["steps.png"] = "metrics against the training step"
    if any(read_metrics(e["exp"]) for e in report["experiments"]):  # not for checkpoints copied out of a run
        plot_curves([e["exp"] for e in report["experiments"]], out / "curves.png")
        figures["curves.png"] = "training curves"
    atomic_write_json(out / "report.json", report)
    bl = blocks(report, out, figures)
    atomic_write_text(out / "report.md", render_md(bl))
    atomic_write_text(out / "report.html", render_html(bl, "sqvae-speech report"))
