"""`alexsearch serve`: the index in a page, on loopback by default."""

from __future__ import annotations

from pathlib import Path

import typer

from ..images.files import DEFAULT_MAX_MEGAPIXELS
from .render import err, out


def serve(
    index_dirs: list[Path] = typer.Option(
        None,
        "--index",
        help="Index folder (default: indexes/default). Several (--index A --index B): "
        "served as one without merging (their weights must match).",
    ),
    weights_path: Path = typer.Option(None, "--weights", help="(default: the index's weights)"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto (for queries by upload)."),
    max_upload: str = typer.Option("25M", "--max-upload", help="Largest upload, e.g. 25M."),
    max_megapixels: float = typer.Option(
        DEFAULT_MAX_MEGAPIXELS, "--max-megapixels", help="Refuse larger uploaded images."
    ),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in a browser."),
) -> None:
    """Browse an index in a page: drop a photo, see its neighbours, click one, go on."""
    from .. import api
    from ..errors import UserError

    cap = api.parse_bytes(max_upload, "--max-upload")
    if cap is None or cap < 1:
        raise UserError(f"--max-upload {max_upload!r} must be at least 1 byte")
    several = bool(index_dirs) and len(index_dirs) > 1
    if several:  # indexes whose distances do not compare: one line, before serving
        ix = api.open_indexes(index_dirs, weights_path, device, max_megapixels)
    else:
        ix = api.open_index(index_dirs[0] if index_dirs else None, weights_path, device,
                            max_megapixels)  # fmt: skip
    try:
        files = ix.info()["files"]
        what = (
            ", ".join(str(p.dir) for p in ix.parts)
            + f" ({files} photos in {len(ix.parts)} indexes)"
            if several
            else f"{ix.dir} ({files} photos)"
        )
        ix.load_network()  # weights that do not match the index: one line, before serving
        from ..serve.app import create_app
        from ..serve.run import bind, exposure_warning, serve

        def warn(line):
            err.print(line, highlight=False, soft_wrap=True)

        sock = bind(host, port)
        warning = exposure_warning(host)
        if warning:
            warn(warning)
        app = create_app(ix, cap, loopback=warning is None)

        def say(url):
            out.print(f"serving {what} at {url}  (Ctrl-C stops)",
                      highlight=False, soft_wrap=True)  # fmt: skip

        serve(app, sock, open_browser, say, warn)
        out.print("stopped", highlight=False)
    finally:
        ix.close()
