"""`alexsearch serve`: a page to browse an index in (query by photo, click to go on, the
t-SNE map and the kernels), over a small JSON API. `app` builds the ASGI app on the
library's Index; `run` binds, serves with uvicorn and stops cleanly on Ctrl-C."""
