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

from ..files import atomic_write_text
from ..store.layout import check_outside_stores, rule_slug
from ..errors import ActdbError, InputError


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "store"


def headline(store) -> list[tuple[str, str]]:
    """(what, value) rows: the papers' questions answered in one line each."""
    q = store.sql
    rows: list[tuple[str, str]] = []
    m = store.manifest
    rows.append(("tokens / sequences", f"{m.n_tokens:,} / {m.n_sequences:,} (seq_len {m.seq_len}, {m.mode})"))
    rows.append(("neurons", f"{len(m.layers)} layers x {m.d_ffn} = {len(m.layers) * m.d_ffn:,}"))
    rows.append(("fire rule", f"`{store.rule}`: {m.rule_record(store.rule).definition}"
                 + (f" (recorded: {', '.join(m.rules)})" if len(m.rules) > 1 else "")))
    d = q("SELECT sum(n_dead) AS dead, sum(n_neurons) AS n, max(dead_frac) AS worst, "
          "arg_max(layer, dead_frac) AS worst_layer, avg(mean_freq_alive) AS freq FROM layer_stats").row(0, named=True)
    rows.append(("dead neurons", f"{d['dead']:,} of {d['n']:,} ({100 * d['dead'] / d['n']:.2f} %); most in layer "
                                 f"{d['worst_layer']} ({100 * d['worst']:.1f} %)"))
    rows.append(("mean firing frequency of alive neurons", f"{100 * (d['freq'] or 0):.1f} % of tokens (mean over layers)"))
    t = q("SELECT * FROM index_info").row(0, named=True)   # the thresholds the index was built with
    c = q(f"SELECT count(*) FILTER (WHERE n_covering <= {int(t['tok_max_cov'])}) AS small, count(*) AS n, "
          "median(n_covering) AS med FROM coverage WHERE n = 1").row(0, named=True)
    rows.append((f"unigram coverage ({100 * t['p_cov']:g} %)",
                 f"median {c['med'] or 0:,.0f} tokens; {c['small']:,} of {c['n']:,} alive "
                 f"neurons covered by 1-{t['tok_max_cov']} tokens"))
    n_det = q("SELECT count(*) FROM token_detectors").item()
    tok = q("SELECT count(DISTINCT id) FROM (SELECT unnest(token_ids) AS id FROM token_detectors)").item()
    rows.append(("token detectors", f"{n_det:,} neurons detecting {tok:,} distinct tokens"))
    tri = q("SELECT count(*) FROM trigram_detectors").item()
    rows.append(("trigram detectors", f"{tri:,} neurons (n-gram layers "
                                      f"{', '.join(map(str, q('SELECT layer FROM ngram_layers')['layer'].to_list()))})"))
    views = store.views()
    if "detector_suppression" in views:
        s = q("SELECT count(*) AS n, avg(suppresses::INT) AS share FROM detector_suppression").row(0, named=True)
        if s["n"]:
            rows.append(("detectors suppressing their triggers", f"{100 * s['share']:.0f} % of {s['n']:,} "
                                                                 "(paper, OPT: over 80 %)"))
    p = q("SELECT pattern, count(*) AS n, count(*) FILTER (WHERE strong) AS strong FROM positional_neurons "
          "GROUP BY pattern ORDER BY n DESC")
    rows.append((f"positional neurons (I > {t['mi_min']:g})", ", ".join(f"{r['n']:,} {r['pattern']} ({r['strong']:,} strong)"
                                                          for r in p.iter_rows(named=True)) or "none"))
    if "massive_activations" in views:
        ma = q("SELECT count(*) AS n, count(DISTINCT dim) AS dims, max(abs(value)) AS top, min(layer) AS first, "
               "avg((pos = 0)::INT) AS first_pos FROM massive_activations").row(0, named=True)
        if ma["n"]:
            dims = q("SELECT dim FROM massive_activations GROUP BY dim ORDER BY count(*) DESC LIMIT 5")["dim"].to_list()
            rows.append((f"massive activations (abs > {t['abs_min']:g} and >= {t['ratio']:g} x median)",
                         f"{ma['n']:,} in {ma['dims']} dims ({', '.join(map(str, dims))}), up to {ma['top']:,.0f}, "
                         f"from layer {ma['first']}; {100 * ma['first_pos']:.0f} % on position 0"))
        else:
            rows.append((f"massive activations (abs > {t['abs_min']:g} and >= {t['ratio']:g} x median)", "none"))
    return rows


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
    from ..query.catalogue import saved_queries
    from .plot import FIGURES, describe, plot_all

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
        lines += ["", "### Figures", ""]
        for f in figs:
            fig = FIGURES[f.stem]
            lines += [f"**{fig.title}** ({fig.paper}; query `{fig.query}`)", "",
                      f"![{fig.title}]({f.relative_to(out).as_posix()})", ""]
        lines += [f"- {k}: not drawn ({why})" for k, why in skipped.items()]
        lines += ["", "### Saved queries", ""]
        for qname, result in answers.items():
            link = f"[{result}]({(sub / 'queries' / result).relative_to(out).as_posix()})" \
                if result.endswith(".csv") else result
            lines.append(f"- `{qname}` — {titles.get(qname, '')}: {link}")
        lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
