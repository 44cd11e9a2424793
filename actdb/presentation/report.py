"""A short Markdown report over one or more stores: headline numbers, every saved query's
answer as CSV, and every figure as PNG.

    OUT/report.md
    OUT/across-models/figures/*.png, OUT/across-models/queries/*.csv   (several stores: the figures and queries across models)
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


def run_all_queries(store, out_dir: Path, across: bool = False) -> dict[str, str]:
    """Every saved query's answer as CSV (only the queries across models with across=True); returns
    name -> file name, or name -> 'skipped: why'."""
    from ..query.catalogue import saved_queries
    from ..query.output import emit

    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    for sq in saved_queries():
        if across and not sq.across:
            continue
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


def _row(cells: list[str]) -> str:
    """A Markdown table row; a | in a cell (|h|) is escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _answer_line(name: str, title: str, result: str, folder: Path, out: Path, ran: str = "") -> str:
    """A saved query's line: its name, title, the values it ran with, and a link to its CSV (or why not)."""
    link = f"[{result}]({(folder / result).relative_to(out).as_posix()})" if result.endswith(".csv") else result
    return f"- `{name}` — {title}{f' ({ran})' if ran else ''}: {link}"


def across_section(handles: list, out: Path, progress: bool = True) -> list[str]:
    """The report's "Across models" section: the stores side by side (explore.compare), the figures
    across models (OUT/across-models/figures) and the answers of the queries across models
    (OUT/across-models/queries)."""
    from ..explore.compare import comparison, table
    from ..query.across import named
    from ..query.catalogue import saved_queries
    from .across import FIGURES as ACROSS_FIGURES
    from .plot import plot_all

    stores = named(handles)
    c = comparison(stores)
    head, rows = table(c)
    lines = ["## Across models", "",
             f"{len(c.models)} stores side by side; in the figures, a line (or bar group) per store against the "
             "relative depth, layer / (layers - 1), so that models of different depth line up.", "",
             _row(head), "|" + "---|" * len(head)]
    lines += [_row(r) for r in rows]
    lines.append("")
    if c.same_thresholds:
        lines += ["Every store at the same thresholds: " + "; ".join(c.models[0].criteria) + ".", ""]
    else:
        lines += ["Each store at the thresholds of its own index:", ""]
        lines += [f"- {m.store}: " + "; ".join(m.criteria) + "." for m in c.models] + [""]
    sub = out / "across-models"
    figs, skipped = plot_all(stores, sub / "figures", progress=progress)
    for f in figs:
        fig = ACROSS_FIGURES[f.stem]
        lines += [f"**{fig.title}** ({fig.paper}; query `{fig.query}`)", "",
                  f"![{fig.title}]({f.relative_to(out).as_posix()})", ""]
    lines += [f"- {k}: not drawn ({why})" for k, why in skipped.items()]
    titles = {q.name: q.title for q in saved_queries()}
    lines += [_answer_line(name, titles[name], result, sub / "queries", out)
              for name, result in run_all_queries(stores, sub / "queries", across=True).items()]
    return lines + [""]


def write_report(stores: list, out: str | Path, title: str = "actdb report", notes: list[str] | None = None,
                 progress: bool = True) -> Path:
    """Figures, query answers and headline numbers of each store handle (each under its fire rule;
    see report_handles), in OUT/report.md; over two stores or more, first the stores side by side
    (across_section)."""
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
    if len({Path(st.path).resolve() for st in stores}) > 1:   # two stores or more, each under its rules
        lines += across_section(stores, out, progress)
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
            ran = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                            for k, v in parameters(st, qname).items()) if result.endswith(".csv") else ""
            lines.append(_answer_line(qname, titles.get(qname, ""), result, sub / "queries", out, ran))
        lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
