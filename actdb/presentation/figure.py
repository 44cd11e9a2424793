"""What every figure shares, of one store or across models: the Figure record, its title at the
thresholds it is drawn at, and the line that says which model and corpus it was drawn from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..explore.thresholds import criteria, labels, thresholds
from ..query.across import model_name
from ..query.catalogue import Recorded, find_query, parameters

PAPER = "Voita et al. 2023"
SUN = "Sun et al. 2024"


@dataclass(frozen=True)
class Figure:
    name: str
    paper: str                     # which paper figure it reproduces
    title: str                     # {threshold} fields: filled in at the values it is drawn at
    query: str                     # the saved query it draws
    draw: Callable[..., None]      # draw(fig, df, ctx)
    needs: tuple[str, ...] = ()    # views that must exist in the store; "capture": a resid capture
    criteria: tuple[str, ...] = ()  # explore.thresholds.criteria it states under the title


def note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35",
            wrap=True)


def drawn_at(store, fig: Figure, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The thresholds `fig` is drawn at on `store`: the index's, and those its query runs at (its
    parameters as given, else the index's, which its header names)."""
    q = find_query(fig.query)
    run = parameters(store, q, params)
    return {**thresholds(store), **{v.threshold: run[k] for k, v in q.params.items() if isinstance(v, Recorded)}}


class _Names(dict):
    def __missing__(self, key: str) -> str:   # a title without a store names the threshold
        return key


def caption(fig: Figure, values: dict[str, Any] | None = None) -> tuple[str, str]:
    """(title, criteria) of `fig` at threshold `values` (drawn_at; None: the thresholds by name)."""
    if values is None:
        return fig.title.format_map(_Names()), ""
    said = criteria(values)
    return fig.title.format_map(labels(values)), "; ".join(said[c] for c in fig.criteria if c in said)


def describe(store) -> str:
    """'MODEL on CORPUS (N tokens), fired = RULE' for titles."""
    m = store.manifest
    model = model_name(m)
    domains = store.sql("SELECT domain FROM domain_counts ORDER BY n DESC")["domain"].to_list()
    corpus = ", ".join(Path(c.path).name for c in m.corpus)
    dom = f" [{', '.join(domains[:8])}{', …' if len(domains) > 8 else ''}]" if domains else ""
    return f"{model} on {corpus}{dom}, {m.n_tokens:,} tokens, fired = {store.rule}"
