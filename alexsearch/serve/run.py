"""Serving the app with uvicorn: bind first (a port in use is one clear line), print the
URL, warn when the photos become visible beyond this machine, stop on Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import webbrowser

from ..errors import UserError
from .guard import is_loopback


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); UserError when taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use: stop what holds it or pick "
                "another with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise UserError(f"port {port} on {host}: permission denied (try above 1023)") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    return sock


def url_of(sock: socket.socket, reachable: bool = False) -> str:
    """The page's URL on `sock`. reachable: a wildcard bind (0.0.0.0, ::) as the loopback
    address of its family, the one a browser on this machine can open."""
    host, port = sock.getsockname()[:2]
    if reachable and ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def open_page(url: str, warn=print) -> bool:
    """Open `url` in this machine's browser (webbrowser: $BROWSER, else the desktop's
    default); without one, `warn` says so in one line. True when a browser took it."""
    try:
        opened = webbrowser.open(url)
    except Exception as e:  # a broken browser setting must not take the server down
        opened, why = False, f" ({type(e).__name__}: {str(e)[:80]})"
    else:
        why = ""
    if not opened:
        warn(f"--open: no browser could be started here{why}; open {url} yourself")
    return opened


def serve(app, sock: socket.socket, open_browser: bool = False, say=print, warn=print) -> None:
    """Serve `app` on the bound `sock` until Ctrl-C (or SIGTERM); returns when stopped.
    say(url) once bound; open_browser: open the page once the server answers."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    url = url_of(sock)
    if open_browser:

        def opener():
            while not server.started and not server.should_exit:
                threading.Event().wait(0.05)
            if server.started:
                open_page(url_of(sock, reachable=True), warn)

        threading.Thread(target=opener, daemon=True).start()
    say(url)
    # Each request's network runs on one BLAS thread: concurrent queries by upload then
    # fill the cores side by side instead of oversubscribing them (8 clients on 2 cores:
    # upload p95 796 -> 394 ms, bench/serve_load.py).
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1, user_api="blas"):
            server.run(sockets=[sock])  # uvicorn stops gracefully on SIGINT / SIGTERM
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled once stopped
        pass


def exposure_warning(host: str) -> str | None:
    """The warning line for a bind beyond loopback (None on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"warning: bound to {host}, not loopback: the photos of this index can be seen by "
        "anyone who can reach this machine"
    )
