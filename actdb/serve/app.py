"""`actdb serve`: the Starlette app. Each page is one route answering HTML, and the same
route under /api/ answering its data as JSON; the handlers only read the URL, call one
function of pages.py (which asks actdb.explore for the facts) and render its dict. Errors: 404 naming what was not found, 400 for
input the user can fix (408 for a console query past its time limit), 503 for a store file
gone or damaged since the server started, 500 as one line; never a traceback. Requests whose
Host header is not loopback or --host get 400 (ServeSettings.allowed_hosts).
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import ActdbError, InputError, NotFound, StoreError
from ..explore.compare import Compared
from ..explore.layer import LayerQuery
from ..explore.thresholds import share
from ..settings import ServeSettings
from . import pages
from .pages import Served

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Defence in depth beside escaping: no inline script, no script or frame from elsewhere
_HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                          b"script-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]


class _SecurityHeaders:
    """Adds _HEADERS, and Server-Timing: the server's time from the request to its response
    (pages are rendered whole before they start; benchmarks/bench_serve.py reads it)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def send_with(message):
            if message["type"] == "http.response.start":
                ms = f"app;dur={1000 * (time.perf_counter() - t0):.1f}".encode()
                message["headers"] = list(message.get("headers", [])) + _HEADERS + [(b"server-timing", ms)]
            await send(message)
        await self.app(scope, receive, send_with)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "store"


def store_names(stores: list) -> list[str]:
    """URL names of the stores: the folder's name, and for a handle on another fire rule than
    the store's first, the rule after it (smollm2-top-0.995); made unique with -2, -3 …"""
    out: list[str] = []
    for st in stores:
        base = _slug(Path(st.path).resolve().name)
        if st.rules and st.rule != st.rules[0]:
            base = f"{base}-{_slug(st.rule)}"
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out


def _int(value: str, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"{what} {value!r}: expected a number") from None
    if not -2**63 <= n < 2**63:   # past what the views' integers hold
        raise InputError(f"{what} {value!r}: expected a number below 2**63")
    return n


def create_app(stores: list, settings: ServeSettings | None = None):
    """The ASGI app over opened stores (actdb.Store)."""
    import jinja2
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    settings = settings or ServeSettings()
    if not stores:
        raise InputError("serve: expected at least one store")
    served = {n: Served(st, n, settings) for n, st in zip(store_names(stores), stores)}
    for sv in served.values():
        sv.siblings = [(o.rule, o.name) for o in served.values()
                       if o is not sv and Path(o.path).resolve() == Path(sv.path).resolve()]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v, d=2: "—" if v is None else f"{100 * v:.{d}f} %"
    env.filters["num"] = lambda v: "—" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:,.3f}")
    env.filters["dict_with"] = lambda d, **kw: {k: v for k, v in {**d, **kw}.items() if v is not None}
    env.filters["tok"] = lambda t: "∅" if t is None else repr(t)[1:-1]   # control characters visible
    env.filters["share"] = share   # a threshold that is a share, as the index records it
    templates = Jinja2Templates(env=env)
    templates.env.globals["stores"] = list(served)
    compared = Compared([(sv.name, sv.path, sv.rule) for sv in served.values()], settings.timeout)

    def explorer(request: Request) -> Served:
        name = request.path_params["store"]
        ex = served.get(name)
        if ex is None:
            raise NotFound(f"store {name!r}: not served here (stores: {', '.join(served)})")
        return ex

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def status_of(data: dict) -> int:
        """A console answer with an error is 400, 408 past its time limit; any other page is 200."""
        if not data.get("error"):
            return 200
        return 408 if data.get("timed_out") else 400

    def page(template: str, fn: Callable[[Request], dict[str, Any]]):
        """A route endpoint: `fn` gives the data; HTML through `template`, or JSON under /api/.
        A plain function: Starlette runs it in a worker thread, so pages run side by side."""
        def endpoint(request: Request) -> Response:
            data = fn(request)
            status = status_of(data)
            if is_api(request):
                return JSONResponse(data, status_code=status)
            return templates.TemplateResponse(request, template, {"d": data, "page_name": template[:-5]},
                                              status_code=status)
        return endpoint

    # ------------------------------------------------------------ the pages' data (thin)
    def stores_data(request: Request) -> dict:
        return pages.stores_page(list(served.values()))

    def compare_data(request: Request) -> dict:
        return pages.compare_page(compared)

    def store_data(request: Request) -> dict:
        return pages.stores_page([explorer(request)])

    def layer_data(request: Request) -> dict:
        return pages.layer_page(explorer(request), _int(request.path_params["layer"], "layer"),
                                LayerQuery.parse(dict(request.query_params)))

    def team_data(request: Request) -> dict:
        return pages.team_page(explorer(request), _int(request.path_params["layer"], "layer"))

    def neuron_data(request: Request) -> dict:
        p = request.path_params
        return pages.neuron_page(explorer(request), _int(p["layer"], "layer"), _int(p["neuron"], "neuron"),
                                 _int(request.query_params.get("page", "1"), "page"))

    def token_data(request: Request) -> dict:
        q = request.query_params
        tid = q.get("id")
        return pages.token_page(explorer(request), q.get("q"), _int(tid, "token id") if tid else None)

    def doc_data(request: Request) -> dict:
        q = request.query_params
        layer, neuron = q.get("layer"), q.get("neuron")
        return pages.doc_page(explorer(request), _int(request.path_params["doc"], "document"),
                              _int(layer, "layer") if layer else None, _int(neuron, "neuron") if neuron else None)

    def console_data(request: Request) -> dict:
        q = request.query_params
        params = {k[2:]: v for k, v in q.multi_items() if k.startswith("p.") and len(k) > 2}
        return pages.console(explorer(request), q.get("q"), params, q.get("saved") or None)

    def probe_data(request: Request) -> dict:
        q = request.query_params
        neuron = q.get("neuron")
        return pages.probe_page(explorer(request), q.get("text", ""), _int(q.get("layer", ""), "layer"),
                                _int(neuron, "neuron") if neuron else None)

    def console_csv(request: Request) -> Response:
        answer = console_data(request)
        if answer["error"]:
            return PlainTextResponse(answer["error"] + "\n", status_code=status_of(answer))
        headers = {"content-disposition": f'attachment; filename="{answer["store"]}-query.csv"'}
        if answer["truncated"]:
            headers["x-actdb-cut-off"] = f"first {answer['max_rows']} rows (--max-rows)"
        return Response(pages.console_csv(answer), media_type="text/csv; charset=utf-8", headers=headers)

    def figure(request: Request) -> Response:
        name = request.path_params["name"]
        return Response(pages.figure_png(explorer(request), name), media_type="image/png",
                        headers={"cache-control": "max-age=3600"})

    def compare_figure(request: Request) -> Response:
        return Response(pages.compare_png(compared, request.path_params["name"]), media_type="image/png",
                        headers={"cache-control": "max-age=3600"})

    PAGES = [  # path (HTML; the same under /api for JSON), template, data
        ("/", "stores.html", stores_data),
        ("/compare", "compare.html", compare_data),
        ("/s/{store}", "stores.html", store_data),
        ("/s/{store}/layer/{layer}", "layer.html", layer_data),
        ("/s/{store}/layer/{layer}/positional", "team.html", team_data),
        ("/s/{store}/neuron/{layer}/{neuron}", "neuron.html", neuron_data),
        ("/s/{store}/token", "token.html", token_data),
        ("/s/{store}/doc/{doc}", "doc.html", doc_data),
        ("/s/{store}/sql", "sql.html", console_data),
    ]
    routes = []
    for path, template, fn in PAGES:
        ep = page(template, fn)
        routes += [Route(path, ep), Route("/api" + (path if path != "/" else "/stores"), ep)]
    routes += [
        Route("/api/s/{store}/probe", lambda r: JSONResponse(probe_data(r))),
        Route("/api/s/{store}/sql.csv", console_csv),
        Route("/s/{store}/figure/{name}.png", figure),
        Route("/compare/figure/{name}.png", compare_figure),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    # ------------------------------------------------------------ errors
    def error(request: Request, status: int, message: str) -> Response:
        if is_api(request) or request.url.path.startswith(("/static/", "/s/", "/compare/")) \
                and request.url.path.endswith(".png"):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"d": {"status": status, "error": message},
                                                                  "page_name": "error"}, status_code=status)

    def not_found(request, exc) -> Response:
        return error(request, 404, str(exc))

    def bad_input(request, exc) -> Response:
        return error(request, 400, str(exc))

    def http_error(request, exc) -> Response:
        msg = f"{request.url.path}: no such page" if exc.status_code == 404 else str(exc.detail)
        return error(request, exc.status_code, msg)

    def unavailable(request, exc) -> Response:
        # a store file deleted, cut or changed since the server started: the store's to mend, not the user's
        if isinstance(exc, OSError):
            why = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
            message = f"{exc.filename}: {why}" if exc.filename else why
        else:
            message = str(exc)
        return error(request, 503, message)

    def internal(request, exc) -> Response:
        print(f"actdb serve: internal error on {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return error(request, 500, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}")

    handlers = {NotFound: not_found, ActdbError: bad_input, StoreError: unavailable, OSError: unavailable,
                HTTPException: http_error, Exception: internal}
    app = Starlette(routes=routes, exception_handlers=handlers,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)])
    app.state.served = served
    return _SecurityHeaders(app)


def open_every_rule(paths: list[str]) -> list:
    """A handle per store and fire rule, the store's first rule first: each is served under its
    own name (store_names), and its pages link to the others."""
    from ..query.handle import open as open_store

    out = []
    for p in paths:
        first = open_store(p)
        out += [first] + [open_store(p, rule=r) for r in first.rules[1:]]
    return out


def serve(paths: list[str], settings: ServeSettings, echo: Callable[[str], None] = print) -> None:
    """Open the stores, bind, print the URL and serve until Ctrl-C."""
    import socket

    import uvicorn

    stores = open_every_rule(paths)
    app = create_app(stores, settings)
    if not settings.loopback:
        echo(f"warning: listening on {settings.host}, not loopback: anyone who can reach this machine can read "
             "the pages and run queries in the SQL console")
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)   # before the URL is printed: a client that connects at once waits for uvicorn
    except OSError as e:
        sock.close()
        raise InputError(f"--host {settings.host} --port {settings.port}: cannot listen there ({e.strerror or e})") \
            from None
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    names = store_names(stores)
    echo(f"actdb serve: http://{host}:{port}/  ({len(stores)} store(s): {', '.join(names)}; Ctrl-C stops)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
