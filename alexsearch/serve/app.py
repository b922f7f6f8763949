"""The ASGI app of `alexsearch serve`: the page (plain files shipped in the package) and
the JSON API it uses, every answer from the library (alexsearch.api.Index).

    GET  /api/info            what `info --index --json` prints, plus codes and limits
    GET  /api/generation      {"generation": ...} alone: cheap, for the page to poll
    POST /api/query           multipart `image`, or form/JSON `id`; `k`, `binary`, `rerank`:
                              what `query --json` prints for one image
    GET  /api/label           `word`, `k`, `min_prob`: what `query --label WORD --json` prints
    GET  /api/duplicates      `tier` (exact|near|similar): what `duplicates --json` prints,
                              plus the generation it was found in (cached per generation)
    GET  /api/thumb/{id}      the stored 32x32 thumbnail (PNG)
    GET  /api/image/{id}      the photo's own file (JPEG for formats browsers do not show)
    GET  /api/map             t-SNE positions of the current generation (cached)
    GET  /api/kernels         the conv1 kernels of the index's weights (PNG)

Over several indexes (an alexsearch.api.MultiIndex: `serve --index A --index B`) a photo
is named "PART:ID" (its index's position, its catalogue id there) wherever one index
takes an id: `id` of /api/query, /api/thumb/{ref}, /api/image/{ref}; each hit carries
its `index` and `part`; /api/info gives the totals and each index under `parts`. What
belongs to one index (binary codes, duplicates, the t-SNE map) answers 400: merge first.

Every JSON answer of the index (info, query, label, duplicates, map) carries the header
`Alexsearch-Generation`: the generation it answers from ("2,1" over several indexes), so
the page notices a re-index published while it is open and refreshes what it shows.

Files are reached by catalogue id only (paths are only display text); nothing is written
but the t-SNE cache, and nothing is moved. Errors
are {"error": "one line"} with a 4xx status (503 when the index itself went away, 500
for a bug).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import CodesError, IndexError_, NotFoundError, OutsideError, UserError
from ..index.duplicates import TIERS
from .guard import LoopbackHostOnly, TooLarge, parse_multipart, read_body

DEFAULT_MAX_UPLOAD = 25 * 1024**2
GENERATION_HEADER = "Alexsearch-Generation"
MAX_K = 500
PAGE_FILES = {  # the only files the page is made of
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_of(e: UserError) -> int:
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, OutsideError):
        return 403
    if isinstance(e, CodesError):
        return 409
    if isinstance(e, IndexError_):
        return 503
    return 400


def _page_file(name: str) -> Response:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(body, media_type=PAGE_FILES[name], headers={"cache-control": "no-cache"})


def _int(value, name: str, low: int, high: int) -> int:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number; got {str(value)[:40]!r}") from None
    if not low <= n <= high:
        raise BadRequest(f"{name} must be between {low} and {high}; got {n}")
    return n


def _prob(value) -> float:
    try:
        p = float(str(value).strip() or 0)
    except ValueError:
        raise BadRequest(f"min_prob must be a number; got {str(value)[:40]!r}") from None
    if not 0.0 <= p <= 1.0:
        raise BadRequest(f"min_prob must be between 0 and 1; got {p}")
    return p


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise BadRequest(f"binary must be true or false; got {v[:40]!r}")


def create_app(ix, max_upload: int = DEFAULT_MAX_UPLOAD, loopback: bool = True) -> Starlette:
    """The app serving index `ix` (an opened alexsearch.api.Index, or a MultiIndex for
    several). loopback: refuse requests whose Host is not a loopback name (the server is
    bound to loopback)."""
    from ..api import MultiIndex

    several = isinstance(ix, MultiIndex)

    def answer(payload: dict) -> JSONResponse:
        """`payload` as JSON, with the generation the index answers from now (read after
        the answer was found: a publish meanwhile is then reported, never missed)."""
        try:
            gen = ix.generation()
        except UserError:  # the index went away after answering: the answer still stands
            return JSONResponse(payload)
        value = ",".join(map(str, gen)) if isinstance(gen, tuple) else str(gen)
        return JSONResponse(payload, headers={GENERATION_HEADER: value})

    async def page(request: Request) -> Response:
        return _page_file("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            return error(f"no such page file: {name[:60]}", 404)
        return _page_file(name)

    def info(request: Request) -> Response:
        desc = ix.info()
        desc["binary"] = ix.codes()
        desc["max_upload"] = max_upload
        desc["max_k"] = MAX_K
        return answer(desc)

    def generation(request: Request) -> Response:
        gen = ix.generation()
        return answer({"generation": list(gen) if isinstance(gen, tuple) else gen})

    # Uploads run the network on threads of their own, one a core (the rest wait their
    # turn in order), rather than every request's thread contending for the cores and the
    # GIL; the same few threads each time, so the forward's buffers are not spread over
    # one allocator arena per request thread.
    embedding = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="alexsearch-embed")

    async def query(request: Request) -> Response:
        fields, image = await _query_input(request, max_upload)
        k = _int(fields.get("k", 6), "k", 1, MAX_K)
        binary = _bool(fields.get("binary", False))
        rerank = _int(fields.get("rerank", 0) or 0, "rerank", 0, 100_000)
        label = str(fields["label"]) if fields.get("label") not in (None, "") else None
        by_label = {"label": label, "min_prob": _prob(fields.get("min_prob", 0.0))}
        if several:
            if label is not None:
                raise BadRequest("a photo's neighbours within a class answer over one index: "
                                 "merge the indexes first (alexsearch merge)")  # fmt: skip
            by_label = {}
        if image is not None:
            if not image:
                raise BadRequest("the uploaded image is empty")
            run = functools.partial(ix.query, image, k, binary, rerank, **by_label)
            res = (await asyncio.get_running_loop().run_in_executor(embedding, run))[0]
            if res.error:
                raise BadRequest(f"the uploaded image cannot be used: {res.error}")
        elif "id" in fields:
            file_id = str(fields["id"]) if several else _int(fields["id"], "id", 0, 2**62)
            found = await run_in_threadpool(ix.query_ids, file_id, k, binary, rerank, **by_label)
            res = found[0]
        else:
            raise BadRequest("send an image (multipart field `image`) or an `id`")
        return await run_in_threadpool(answer, res.to_dict())

    def label(request: Request) -> Response:
        word = request.query_params.get("word", "")
        if not word.strip():
            raise BadRequest("give a class name: /api/label?word=cat")
        k = _int(request.query_params.get("k", 20), "k", 1, MAX_K)
        min_prob = _prob(request.query_params.get("min_prob", 0.0))
        return answer(ix.query_label(word, k, min_prob).to_dict())

    # Finding duplicates reads every photo's fc7 and hash (about 1 s per 10k photos): each
    # tier's report is kept until a new generation is published, and found once at a time.
    dup_cache: dict[tuple[int, str], dict] = {}
    dup_lock = threading.Lock()

    def duplicates(request: Request) -> Response:
        tier = request.query_params.get("tier", "near").strip() or "near"
        if tier not in TIERS:
            raise BadRequest(f"tier must be one of {', '.join(TIERS)}; got {tier[:40]!r}")
        with dup_lock:
            gen = ix.generation()
            found = dup_cache.get((gen, tier))
            if found is None:
                found = {**ix.duplicates(tier).to_dict(), "generation": gen}
                if ix.generation() == gen:  # not one published meanwhile
                    for old in [key for key in dup_cache if key[0] != gen]:
                        del dup_cache[old]  # an older generation's are never asked again
                    dup_cache[(gen, tier)] = found
        return answer(found)

    def thumb(request: Request) -> Response:
        png = ix.thumbnail_png(request.path_params["id"])
        return Response(png, media_type="image/png", headers={"cache-control": "max-age=60"})

    def image(request: Request) -> Response:
        file_id = request.path_params["id"]
        try:
            data, media_type = ix.image(file_id)
        except OSError as e:
            return error(f"file {file_id} cannot be read now ({e.strerror or e})", 404)
        return Response(data, media_type=media_type, headers={"cache-control": "max-age=60"})

    def tsne_map(request: Request) -> Response:
        return answer(ix.tsne_map())

    def kernels(request: Request) -> Response:
        return Response(ix.kernels_png(), media_type="image/png")

    async def on_user_error(request: Request, e: UserError) -> Response:
        return error(str(e), _status_of(e))

    async def on_bad_request(request: Request, e: BadRequest) -> Response:
        return error(str(e), e.status)

    async def on_too_large(request: Request, e: TooLarge) -> Response:
        return error(f"upload over the {max_upload / 1024**2:g} MB cap (--max-upload)", 413)

    async def on_http(request: Request, e: HTTPException) -> Response:
        if e.status_code == 404:
            return error(f"no such page or endpoint: {request.url.path[:80]}", 404)
        if e.status_code == 405:
            return error(f"{request.method} is not allowed on {request.url.path[:80]}", 405)
        return error(str(e.detail), e.status_code)

    async def on_bug(request: Request, e: Exception) -> Response:
        return error(f"internal error: {type(e).__name__}: {str(e)[:200]}", 500)

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/info", info),
        Route("/api/generation", generation),
        Route("/api/query", query, methods=["POST"]),
        Route("/api/label", label),
        Route("/api/duplicates", duplicates),
        Route("/api/thumb/{id}" if several else "/api/thumb/{id:int}", thumb),
        Route("/api/image/{id}" if several else "/api/image/{id:int}", image),
        Route("/api/map", tsne_map),
        Route("/api/kernels", kernels),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            UserError: on_user_error,
            BadRequest: on_bad_request,
            TooLarge: on_too_large,
            HTTPException: on_http,
            Exception: on_bug,  # a bug still answers JSON, in one line
        },
    )
    return LoopbackHostOnly(app) if loopback else app


async def _query_input(request: Request, cap: int) -> tuple[dict, bytes | None]:
    """The query's fields and uploaded image bytes (None when it names an id)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, cap + 64 * 1024)
    if ctype == "multipart/form-data":
        try:
            form = await parse_multipart(request.headers, body)
        except Exception as e:  # python-multipart's and starlette's parse errors
            raise BadRequest(f"malformed multipart body ({str(e)[:80]})") from None
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return fields, None
        data = await upload.read()
        if len(data) > cap:
            raise TooLarge
        return fields, data
    if ctype == "application/json":
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise BadRequest('the JSON body must be an object such as {"id": 3, "k": 6}')
        return fields, None
    if ctype in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise BadRequest("the form body is not UTF-8") from None
        return {k: v[-1] for k, v in pairs.items()}, None
    raise BadRequest(f"unsupported content type {ctype[:60]!r}", 415)
