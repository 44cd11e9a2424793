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
from .grammar import RULE_GRAMMAR
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


def _field_help(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def _out_option(writes: str, required: bool = False, metavar: str = "PATH"):
    """-o/--out, the one output option of every command that writes; `writes` says what it writes."""
    return click.option("-o", "--out", "out", required=required, default=None, metavar=metavar, help=writes)


_PARAM_HELP = ("Bind $NAME to VALUE (repeatable). A saved query or figure has defaults for its parameters "
               "(`actdb query NAME --describe`); -p rule RULE picks another recorded fire rule.")
_FORMATS = click.Choice(["table", "csv", "json", "parquet"])


def _output_options(writes: str, formats: bool = True):
    """-p/--param, -o/--out and (with `formats`) -f/--format, as `sql`, `query` and `plot` take them;
    --output, -o's long name in `sql` and `query` before it was --out everywhere, stays a hidden
    alias for one release."""
    def add(fn):
        @functools.wraps(fn)
        def merged(*args, output_alias: str | None = None, **kwargs):
            if output_alias is not None:
                if kwargs.get("out") not in (None, output_alias):
                    raise click.UsageError("-o/--out and --output name the same option: give one")
                kwargs["out"] = output_alias
            return fn(*args, **kwargs)

        merged = click.option("--output", "output_alias", default=None, hidden=True)(merged)
        if formats:
            merged = click.option("-f", "--format", "fmt", type=_FORMATS, default="table", show_default=True,
                                  help="Output format (parquet needs -o).")(merged)
        merged = _out_option(writes)(merged)
        return click.option("-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE",
                            help=_PARAM_HELP)(merged)
    return add


_ANSWER_FILE = "File to write the answer to (required for -f parquet; default: stdout)."
_RULE_HELP = (f"Fire rule, one that ingest recorded (--fire-rule): {RULE_GRAMMAR}. `index` and `report` take "
              "several (repeat --rule) or 'all', every recorded rule.")


def _rule_option(default: str, several: bool = False):
    """--rule, the same option and help wherever a command reads one fire rule (or several)."""
    return click.option("--rule", "rules" if several else "rule", multiple=several, default=() if several else None,
                        metavar="RULE", show_default=default, help=_RULE_HELP)


def _echo(text: str) -> None:
    click.echo(text, nl=False)


def _open(stores: tuple[str, ...], rule: str | None = None):
    """One store as it always was (actdb.Store); several, or one given as NAME=PATH, together
    (query.across.Stores: each under its schema, and the unions)."""
    from .query.across import parse_spec
    from .query.handle import open as open_store

    if len(stores) == 1 and parse_spec(stores[0])[0] is None:
        return open_store(stores[0], rule=rule)
    return open_store(list(stores), rule=rule)


_STORES_HELP = ("Several stores are queried together: each store's views under a schema named after its folder "
                "(or NAME=PATH), every view also as their union with store, model, n_layers and depth columns.")


@click.group()
@click.version_option(__version__, prog_name="actdb")
def main() -> None:
    """actdb: record which FFN neurons fire on which tokens, and query it with SQL."""


@main.command()
@click.argument("model")
@click.argument("corpus", nargs=-1, required=True)
@_out_option(_field_help(IngestSettings, "out"), required=True, metavar="STORE")
@_settings_options
@_ray_options
@_one_line_errors
def ingest(model: str, corpus: tuple[str, ...], out: str, **options) -> None:
    """Run MODEL over CORPUS files and record every FFN neuron's firing per token.

    \b
    Example:
      actdb ingest facebook/opt-125m corpus.jsonl -o runs/opt125m --seq-len 128 --max-tokens 100000
    """
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
    """Describe a store: model, layers, tokens, corpus.

    \b
    Example:
      actdb info runs/opt125m
    """
    from .query.handle import open as open_store

    st = open_store(store)
    for line in st.describe():
        click.echo(line)


@main.command()
@click.argument("store")
@functools.partial(_settings_options, cls=IndexSettings)
@_rule_option("all", several=True)
@_ray_options
@_one_line_errors
def index(store: str, rules: tuple[str, ...], **options) -> None:
    """Build (or resume) the query index of STORE: per-neuron counts as Parquet, per fire rule.

    \b
    Example:
      actdb index runs/opt125m --layers 0-5 --top-k 128
    """
    from .index.build import build_index

    ray = _ray_settings(options)
    settings = IndexSettings(**options)
    # None: every recorded rule, the first one first (it holds the tables no rule changes)
    for rule in (None,) if not rules or "all" in rules else dict.fromkeys(rules):
        root = build_index(store, settings=settings, rule=rule, ray=ray)
        click.echo(f"index        {root}")


@main.command()
@click.argument("store", nargs=-1, required=True)
@click.argument("query")
@_output_options(_ANSWER_FILE)
@_query_options
@_one_line_errors
def sql(store: tuple[str, ...], query: str, params: tuple[tuple[str, str], ...], fmt: str, out: str | None,
        **options) -> None:
    """Run one read-only SQL statement over the views of STORE (or of several: the statement is the
    last argument). It reads only the stores' files.

    \b
    Example:
      actdb sql runs/opt125m 'SELECT layer, dead_frac FROM layer_stats WHERE layer < $n' -p n 6 -f csv -o dead.csv
      actdb sql runs/opt125m runs/opt1.3b 'SELECT store, depth, dead_frac FROM layer_stats' -f csv
    """
    from .query.output import check_output, emit

    qs = QuerySettings(**options)
    check_output(fmt, out)
    with _open(store).stream(query, dict(params), timeout=qs.timeout, timeout_hint="--timeout") as answer:
        emit(answer, fmt, out, _echo, qs.max_rows)


@main.command()
@click.argument("store", nargs=-1)
@click.argument("name", required=False)
@_output_options(_ANSWER_FILE)
@click.option("--list", "list_", is_flag=True, help="List the saved queries, what they reproduce and their parameters.")
@click.option("--describe", is_flag=True, help="Describe query NAME (title, what it reproduces, parameters "
              "with default and help) instead of running it; STORE may be omitted.")
@_query_options
@_one_line_errors
def query(store: tuple[str, ...], name: str | None, params, fmt: str, out: str | None, list_: bool,
          describe: bool, **options) -> None:
    """Run a saved query NAME (from queries/) or a .sql FILE on STORE, or on several stores (the
    name is the last argument): a query across models reads them together, any other runs on each
    store, its rows led by store, model, n_layers and depth.

    \b
    Example:
      actdb query runs/opt125m token_detectors_per_layer -p max_cov 3 -f json -o detectors.json
      actdb query runs/opt125m runs/opt1.3b across_dead_freq -f csv
      actdb query --list
    """
    from .errors import InputError
    from .query.catalogue import describe_lines, find_query, list_lines
    from .query.output import check_output, emit

    if list_:
        for line in list_lines():
            click.echo(line)
        return
    if describe:
        # `actdb query NAME --describe` needs no store
        for line in describe_lines(name or ""):
            click.echo(line)
        return
    if not store or not name:
        raise InputError("query: expected STORE... and NAME|FILE (or --list)")
    qs = QuerySettings(**options)
    find_query(name)  # a missing query or file is named before the store is opened
    check_output(fmt, out)
    with _open(store).stream(name, dict(params), timeout=qs.timeout, timeout_hint="--timeout",
                             saved=True) as answer:
        emit(answer, fmt, out, _echo, qs.max_rows)


@main.command()
@click.argument("store")
@_one_line_errors
def check(store: str) -> None:
    """Verify STORE: manifest, checksums of every file, row counts, index freshness.
    Prints each problem with its path; exits non-zero if there is any.

    \b
    Example:
      actdb check runs/opt125m
    """
    from .store.audit import check_store
    from .errors import StoreError

    report = check_store(store)
    for line in report.lines():
        click.echo(line)
    if report.problems:
        raise StoreError(f"{store}: {len(report.problems)} problem(s) found")


@main.command()
@click.argument("store", nargs=-1)
@click.argument("figure", required=False)
@_output_options("PNG file to write, or the folder for 'all' (default: FIGURE.png, or figures/ for 'all').",
                 formats=False)
@click.option("--list", "list_", is_flag=True, help="List the figures and the paper figures they reproduce.")
@_rule_option("the store's first")
@_one_line_errors
def plot(store: tuple[str, ...], figure: str | None, out: str | None, params, list_: bool, rule: str | None) -> None:
    """Draw paper FIGURE (or 'all') from STORE as PNG; from several stores (the figure is the last
    argument), a line or bar group per store by relative depth (--list says which figures).

    \b
    Example:
      actdb plot runs/opt125m fig3a -p max_cov 3 -o fig3a.png
      actdb plot runs/opt125m all -o figures/
      actdb plot runs/opt125m runs/opt1.3b fig1a -o dead.png
    """
    from .errors import InputError
    from .presentation.plot import list_lines, plot as draw, plot_all

    if list_:
        for line in list_lines():
            click.echo(line)
        return
    if not store or not figure:
        raise InputError("plot: expected STORE... and FIGURE (or 'all', or --list)")
    st = _open(store, rule=rule)
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
@_out_option("Folder to write (report.md, figures/, queries/).", required=True, metavar="DIR")
@click.option("--title", default="actdb report", show_default=True, help="Title of the report.")
@click.option("--note", "notes", multiple=True, help="A paragraph under the title (repeatable).")
@_rule_option("each store's first", several=True)
@_one_line_errors
def report(stores: tuple[str, ...], out: str, title: str, notes: tuple[str, ...], rules: tuple[str, ...]) -> None:
    """Markdown report over STORES: headline numbers, every figure, every saved query's answer.

    \b
    Example:
      actdb report runs/opt125m runs/smollm2 -o report/ --rule all --note "First look."
    """
    from .presentation.report import report_handles, write_report
    from .query.handle import open as open_store

    handles = report_handles([open_store(s) for s in stores], list(rules))
    click.echo(f"wrote {write_report(handles, out, title, list(notes))}")


@main.command()
@click.argument("store_a")
@click.argument("store_b")
@_out_option("CSV file to write: each neuron of STORE_A and its best match in STORE_B.", required=True)
@click.option("--rule-a", default=None, metavar="RULE", help="Fire rule of STORE_A (default: its first).")
@click.option("--rule-b", default=None, metavar="RULE", help="Fire rule of STORE_B (default: its first).")
@click.option("--same-layer", is_flag=True, help="Match each neuron only within the layer of the same number.")
@click.option("--memory-mb", default=512.0, show_default=True, help="Memory for the counts of a tile of neuron pairs.")
@click.option("--device", default="cpu", show_default=True, help="Where the pairs are counted: cpu, cuda, cuda:1, auto.")
@_one_line_errors
def match(store_a: str, store_b: str, out: str, rule_a: str | None, rule_b: str | None, same_layer: bool,
          memory_mb: float, device: str) -> None:
    """Each neuron of STORE_A and its best match by phi in STORE_B, over the same token rows (two
    rules of one store, or two models with one tokenizer, corpus and settings).

    \b
    Example:
      actdb match runs/opt125m runs/opt125m --rule-a sign --rule-b top:0.995 -o match.csv
    """
    from .query.matching import match_to_csv

    n = match_to_csv(store_a, store_b, out, rule_a, rule_b, same_layer, device, memory_mb)
    click.echo(f"wrote {out} ({n:,} neurons matched)")


# ignore_unknown_options: "-1" is an argument here, not an unknown option, so a negative layer
# or neuron gets the card's "expected 0..N-1, got -1" instead of click's "No such option"
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("store")
@click.argument("layer", type=int)
@click.argument("neuron", type=int)
@click.option("--top", default=10, show_default=True, help="Top tokens, projected tokens and detected trigrams to show.")
@click.option("--contexts", "n_contexts", default=5, show_default=True, help="Contexts where it fires to show.")
@_rule_option("the store's first")
@_one_line_errors
def neuron(store: str, layer: int, neuron: int, top: int, n_contexts: int, rule: str | None) -> None:
    """A neuron's card: stats, coverage, detector status, top tokens, positions, projection, contexts.

    \b
    Example:
      actdb neuron runs/opt125m 3 1024 --top 20 --contexts 10
    """
    from .presentation.card import neuron_card
    from .query.handle import open as open_store

    for line in neuron_card(open_store(store, rule=rule), layer, neuron, top, n_contexts):
        click.echo(line)


@main.command()
@click.argument("stores", nargs=-1, required=True)
@functools.partial(_settings_options, cls=ServeSettings)
@_one_line_errors
def serve(stores: tuple[str, ...], **options) -> None:
    """A neuron explorer in the browser over STORES (pages and /api/ JSON); prints its URL.

    \b
    Example:
      actdb serve runs/opt125m runs/smollm2 --port 8080
    """
    from .serve.app import serve as run

    try:
        import jinja2, starlette, uvicorn  # noqa: F401,E401  (the optional extra)
    except ImportError as e:
        raise click.ClickException(f"actdb serve needs the extra 'serve' ({e.name} is missing): "
                                   "pip install 'actdb[serve]'") from None
    run(list(stores), ServeSettings(**options), echo=click.echo)


if __name__ == "__main__":
    main()
