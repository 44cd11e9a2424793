"""A short Markdown report over one or more stores: headline numbers, every saved query's
answer as CSV, and every figure as PNG.

    OUT/report.md
    OUT/<store name>/figures/*.png
    OUT/<store name>/queries/*.csv
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from ..errors import ActdbError, InputError
from ..explore.overview import headline
from ..explore.thresholds import criteria, thresholds
from ..files import atomic_write_text
from ..store.layout import check_outside_stores, rule_slug


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "store"


def run_all_queries(store, out_dir: Path) -> dict[str, str]:
    """Every saved query's answer as CSV; returns name -> file name, or name -> 'skipped: why'."""
    from ..query.catalogue import saved_queries
    from ..query.output import emit

    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for sq in saved_queries():
        try:
            table = store.query(sq.name, arrow=True)
        except ActdbError as e:
            done[sq.name] = f"skipped: {e}"
            continue
        emit(table, "csv", str(out_dir / f"{sq.name}.csv"), print)
        done[sq.name] = f"{sq.name}.csv"
    return done


def report_handles(stores: list, rules: list[str] | None = None) -> list:
    """The (store, rule) handles a report covers: each store under `rules` (names, or 'all' for every
    recorded rule; default: each store's first)."""
    out = []
    for st in stores:
        if not rules:
            out.append(st)
            continue
        names = st.rules if "all" in rules else rules
        out += [st.with_rule(r) for r in names]
    return out


def write_report(stores: list, out: str | Path, title: str = "actdb report", notes: list[str] | None = None,
                 progress: bool = True) -> Path:
    """Figures, query answers and headline numbers of each store handle (each under its fire rule;
    see report_handles), in OUT/report.md."""
    from ..query.catalogue import parameters, saved_queries
    from .plot import FIGURES, caption, describe, drawn_at, plot_all

    check_outside_stores(out)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: is a file; expected a folder for the report (report.md, figures, queries)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"-o {out}: cannot create the folder ({e.strerror or e})") from None
    lines = [f"# {title}", "", f"Written by actdb on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    for note in notes or []:
        lines += [note, ""]
    titles = {q.name: q.title for q in saved_queries()}
    for st in stores:
        name = _slug(Path(st.manifest.model).name or st.path.name)
        if st.rule != st.rules[0]:   # the first rule keeps the folder it always had
            name += "--" + rule_slug(st.rule)
        sub = out / name
        figs, skipped = plot_all(st, sub / "figures", progress=progress)
        answers = run_all_queries(st, sub / "queries")
        lines += [f"## {describe(st)}", "", f"Store: `{st.path}`", "", "| question | answer |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in headline(st)]
        lines += ["", "At the thresholds of the index: " + "; ".join(criteria(thresholds(st)).values()) + "."]
        lines += ["", "### Figures", ""]
        for f in figs:
            fig = FIGURES[f.stem]
            title, said = caption(fig, drawn_at(st, fig))
            lines += [f"**{title}** ({fig.paper}; query `{fig.query}`)" + (f": {said}" if said else ""), "",
                      f"![{title}]({f.relative_to(out).as_posix()})", ""]
        lines += [f"- {k}: not drawn ({why})" for k, why in skipped.items()]
        lines += ["", "### Saved queries", ""]
        for qname, result in answers.items():
            link = f"[{result}]({(sub / 'queries' / result).relative_to(out).as_posix()})" \
                if result.endswith(".csv") else result
            ran = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                            for k, v in parameters(st, qname).items()) if result.endswith(".csv") else ""
            lines.append(f"- `{qname}` — {titles.get(qname, '')}{f' ({ran})' if ran else ''}: {link}")
        lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
