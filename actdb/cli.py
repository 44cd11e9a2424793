"""The `actdb` command: thin wrappers over the library; actdb's errors become one line."""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import typing

import click

from ._version import __version__
from .errors import ActdbError
from .settings import POSITIONAL, IndexSettings, IngestSettings, QuerySettings, RaySettings, ServeSettings


class _Interrupted(click.ClickException):
    exit_code = 130   # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def _one_line_errors(fn):
    # only an ingest (and the index it builds) has anything to resume
    stopped = "interrupted (an ingest continues with --resume)" if fn.__name__ in ("ingest", "index") \
        else "interrupted"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
            sys.stdout.flush()   # a closed pipe is found here, not in Python's flush at exit
            return out
        except ActdbError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise _Interrupted(stopped) from None
        except BrokenPipeError:
            # the reader went away (`actdb sql ... | head`): exit quietly, as a shell's tools do;
            # stdout is pointed at devnull so that Python's flush at exit does not fail again
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):   # no file descriptor (output captured in a test)
                pass
            sys.exit(128 + signal.SIGPIPE)
        except OSError as e:   # no permission, a full disk, ...: the file and the reason
            raise click.ClickException(_os_error(e)) from None
        except Exception as e:
            if os.environ.get("ACTDB_DEBUG"):
                raise
            raise click.ClickException(f"internal error: {type(e).__name__}: {e} "
                                       "(set ACTDB_DEBUG=1 for the traceback)") from None
    return wrapper


def _os_error(e: OSError) -> str:
    """An OSError in one line: "PATH: reason"."""
    why = e.strerror or " ".join(str(e).split()) or type(e).__name__
    return f"{e.filename}: {why}" if e.filename else why


def _settings_options(fn, cls: type = IngestSettings):
    """Add one option per field of a settings class (but the positional model/corpus/out)."""
    hints = typing.get_type_hints(cls)
    for f in reversed(dataclasses.fields(cls)):
        if f.name in POSITIONAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if tp is bool:
            decl = [flag] if f.default is False else [f"{flag}/--no-{f.name.replace('_', '-')}"]
            fn = click.option(*decl, f.name, is_flag=True, default=f.default, help=f.metadata["help"])(fn)
            continue
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        ctype = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else base
        extra = {"is_flag": False, "flag_value": f.metadata["flag_value"]} if "flag_value" in f.metadata else {}
        fn = click.option(flag, f.name, type=ctype, default=f.default, show_default=True,
                          multiple=bool(f.metadata.get("multiple")), help=f.metadata["help"], **extra)(fn)
    return fn


_ray_options = functools.partial(_settings_options, cls=RaySettings)


def _ray_settings(options: dict) -> RaySettings:
    """Take the RaySettings fields (--ray, --ray-workers, --gpus-per-worker) out of `options`."""
    return RaySettings(**{f.name: options.pop(f.name) for f in dataclasses.fields(RaySettings)})


def _query_options(fn):
    """One option per QuerySettings field (--timeout, --max-rows)."""
    return _settings_options(fn, QuerySettings)


def _echo(text: str) -> None:
    click.echo(text, nl=False)


@click.group()
@click.version_option(__version__, prog_name="actdb")
def main() -> None:
    """actdb: record which FFN neurons fire on which tokens, and query it with SQL."""


@main.command()
@click.argument("model")
@click.argument("corpus", nargs=-1, required=True)
@click.option("-o", "--out", required=True, help="Output store folder.")
@_settings_options
@_ray_options
@_one_line_errors
def ingest(model: str, corpus: tuple[str, ...], out: str, **options) -> None:
    """Run MODEL over CORPUS files and record every FFN neuron's firing per token."""
    from .ingest.pipeline import ingest as run

    ray = _ray_settings(options)
    settings = IngestSettings(model=model, corpus=tuple(corpus), out=out, **options)
    summary = run(settings, ray)
    for line in summary.lines():
        click.echo(line)


@main.command()
@click.argument("store")
@_one_line_errors
def info(store: str) -> None:
    """Describe a store: model, layers, tokens, corpus."""
    from .query.handle import open as open_store

    st = open_store(store)
    for line in st.describe():
        click.echo(line)


@main.command()
@click.argument("store")
@functools.partial(_settings_options, cls=IndexSettings)
@click.option("--rule", default=None, help="Build only this fire rule's index (default: every recorded rule).")
@_ray_options
@_one_line_errors
def index(store: str, rule: str | None, **options) -> None:
    """Build (or resume) the query index of STORE: per-neuron counts as Parquet, per fire rule."""
    from .index.build import build_index

    ray = _ray_settings(options)
    root = build_index(store, settings=IndexSettings(**options), rule=rule, ray=ray)
    click.echo(f"index        {root}")


_FORMATS = click.Choice(["table", "csv", "json", "parquet"])


@main.command()
@click.argument("store")
@click.argument("query")
@click.option("-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE",
              help="Bind $NAME to VALUE (repeatable).")
@click.option("-f", "--format", "fmt", type=_FORMATS, default="table", show_default=True)
@click.option("-o", "--output", default=None, help="Output file (required for parquet; default stdout).")
@_query_options
@_one_line_errors
def sql(store: str, query: str, params: tuple[tuple[str, str], ...], fmt: str, output: str | None,
        **options) -> None:
    """Run one read-only SQL statement over STORE's views (it reads only STORE's files)."""
    from .query.handle import open as open_store
    from .query.output import check_output, emit

    qs = QuerySettings(**options)
    check_output(fmt, output)
    with open_store(store).stream(query, dict(params), timeout=qs.timeout, timeout_hint="--timeout") as answer:
        emit(answer, fmt, output, _echo, qs.max_rows)


@main.command()
@click.argument("store", required=False)
@click.argument("name", required=False)
@click.option("-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE",
              help="Override a parameter of the query (repeatable).")
@click.option("-f", "--format", "fmt", type=_FORMATS, default="table", show_default=True)
@click.option("-o", "--output", default=None, help="Output file (required for parquet; default stdout).")
@click.option("--list", "list_", is_flag=True, help="List the saved queries, what they reproduce and their parameters.")
@click.option("--describe", is_flag=True, help="Describe query NAME (title, what it reproduces, parameters "
              "with default and help) instead of running it; STORE may be omitted.")
@_query_options
@_one_line_errors
def query(store: str | None, name: str | None, params, fmt: str, output: str | None, list_: bool, describe: bool,
          **options) -> None:
    """Run a saved query NAME (from queries/) or a .sql FILE on STORE."""
    from .errors import InputError
    from .query.catalogue import describe_lines, find_query, list_lines
    from .query.handle import open as open_store
    from .query.output import check_output, emit

    if list_:
        for line in list_lines():
            click.echo(line)
        return
    if describe:
        # `actdb query NAME --describe` needs no store
        for line in describe_lines(name or store or ""):
            click.echo(line)
        return
    if not store or not name:
        raise InputError("query: expected STORE and NAME|FILE (or --list)")
    qs = QuerySettings(**options)
    find_query(name)  # a missing query or file is named before the store is opened
    check_output(fmt, output)
    with open_store(store).stream(name, dict(params), timeout=qs.timeout, timeout_hint="--timeout",
                                  saved=True) as answer:
        emit(answer, fmt, output, _echo, qs.max_rows)


@main.command()
@click.argument("store")
@_one_line_errors
def check(store: str) -> None:
    """Verify STORE: manifest, checksums of every file, row counts, index freshness.
    Prints each problem with its path; exits non-zero if there is any."""
    from .store.audit import check_store
    from .errors import StoreError

    report = check_store(store)
    for line in report.lines():
        click.echo(line)
    if report.problems:
        raise StoreError(f"{store}: {len(report.problems)} problem(s) found")


@main.command()
@click.argument("store", required=False)
@click.argument("figure", required=False)
@click.option("-o", "--out", default=None, help="PNG file (a folder for 'all'; default FIGURE.png / figures/).")
@click.option("-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE",
              help="Override a parameter of the figure's saved query (repeatable).")
@click.option("--list", "list_", is_flag=True, help="List the figures and the paper figures they reproduce.")
@click.option("--rule", default=None, help="Fire rule to draw (default: the store's first; same as -p rule RULE).")
@_one_line_errors
def plot(store: str | None, figure: str | None, out: str | None, params, list_: bool, rule: str | None) -> None:
    """Draw paper FIGURE (or 'all') from STORE as PNG."""
    from .errors import InputError
    from .presentation.plot import list_lines, plot as draw, plot_all
    from .query.handle import open as open_store

    if list_:
        for line in list_lines():
            click.echo(line)
        return
    if not store or not figure:
        raise InputError("plot: expected STORE and FIGURE (or 'all', or --list)")
    st = open_store(store, rule=rule)
    if figure == "all":
        if params:
            raise InputError("plot all: -p applies to one figure, got it with 'all'")
        files, skipped = plot_all(st, out or "figures")
        for f in files:
            click.echo(f"wrote {f}")
        for name, why in skipped.items():
            click.echo(f"skipped {name}: {why}")
        return
    click.echo(f"wrote {draw(st, figure, out or f'{figure}.png', dict(params))}")


@main.command()
@click.argument("stores", nargs=-1, required=True)
@click.option("-o", "--out", required=True, help="Output folder (report.md, figures/, queries/).")
@click.option("--title", default="actdb report", show_default=True, help="Title of the report.")
@click.option("--note", "notes", multiple=True, help="A paragraph under the title (repeatable).")
@click.option("--rule", "rules", multiple=True, help="Fire rule to report (repeatable; 'all': every recorded "
              "rule; default: each store's first).")
@_one_line_errors
def report(stores: tuple[str, ...], out: str, title: str, notes: tuple[str, ...], rules: tuple[str, ...]) -> None:
    """Markdown report over STORES: headline numbers, every figure, every saved query's answer."""
    from .presentation.report import report_handles, write_report
    from .query.handle import open as open_store

    handles = report_handles([open_store(s) for s in stores], list(rules))
    click.echo(f"wrote {write_report(handles, out, title, list(notes))}")


@main.command()
@click.argument("store_a")
@click.argument("store_b")
@click.option("-o", "--out", required=True, help="CSV file: each neuron of STORE_A and its best match in STORE_B.")
@click.option("--rule-a", default=None, help="Fire rule of STORE_A (default: its first).")
@click.option("--rule-b", default=None, help="Fire rule of STORE_B (default: its first).")
@click.option("--same-layer", is_flag=True, help="Match each neuron only within the layer of the same number.")
@click.option("--memory-mb", default=512.0, show_default=True, help="Memory for the counts of a tile of neuron pairs.")
@click.option("--device", default="cpu", show_default=True, help="Where the pairs are counted: cpu, cuda, cuda:1, auto.")
@_one_line_errors
def match(store_a: str, store_b: str, out: str, rule_a: str | None, rule_b: str | None, same_layer: bool,
          memory_mb: float, device: str) -> None:
    """Each neuron of STORE_A and its best match by phi in STORE_B, over the same token rows (two
    rules of one store, or two models with one tokenizer, corpus and settings)."""
    import polars as pl

    from .index.build import resolve_workers
    from .cofire import Match, as_rows, match_stores
    from .index.count import resolve_device
    from .query.handle import open as open_store
    from .store.layout import check_outside_stores

    check_outside_stores(out)
    found = match_stores(open_store(store_a, rule=rule_a), open_store(store_b, rule=rule_b), same_layer,
                         device=resolve_device(device), memory_mb=memory_mb, workers=resolve_workers(0))
    schema = {f.name: (pl.Float64 if f.name in ("jaccard", "p_other_given", "phi") else pl.Int64)
              for f in dataclasses.fields(Match)}
    pl.DataFrame(as_rows(found), schema=schema).write_csv(out)
    click.echo(f"wrote {out} ({len(found):,} neurons matched)")


# ignore_unknown_options: "-1" is an argument here, not an unknown option, so a negative layer
# or neuron gets the card's "expected 0..N-1, got -1" instead of click's "No such option"
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("store")
@click.argument("layer", type=int)
@click.argument("neuron", type=int)
@click.option("--top", default=10, show_default=True, help="Top tokens, projected tokens and detected trigrams to show.")
@click.option("--contexts", "n_contexts", default=5, show_default=True, help="Contexts where it fires to show.")
@click.option("--rule", default=None, help="Fire rule (default: the store's first).")
@_one_line_errors
def neuron(store: str, layer: int, neuron: int, top: int, n_contexts: int, rule: str | None) -> None:
    """A neuron's card: stats, coverage, detector status, top tokens, positions, projection, contexts."""
    from .presentation.card import neuron_card
    from .query.handle import open as open_store

    for line in neuron_card(open_store(store, rule=rule), layer, neuron, top, n_contexts):
        click.echo(line)


@main.command()
@click.argument("stores", nargs=-1, required=True)
@functools.partial(_settings_options, cls=ServeSettings)
@_one_line_errors
def serve(stores: tuple[str, ...], **options) -> None:
    """A neuron explorer in the browser over STORES (pages and /api/ JSON); prints its URL."""
    from .serve.app import serve as run

    try:
        import jinja2, starlette, uvicorn  # noqa: F401,E401  (the optional extra)
    except ImportError as e:
        raise click.ClickException(f"actdb serve needs the extra 'serve' ({e.name} is missing): "
                                   "pip install 'actdb[serve]'") from None
    run(list(stores), ServeSettings(**options), echo=click.echo)


if __name__ == "__main__":
    main()
