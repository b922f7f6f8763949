"""alexsearch: semantic image search with the AlexNet of Krizhevsky, Sutskever & Hinton (2012).

The Python API (the one the CLI calls):

    import alexsearch

    alexsearch.build_index(["photos"], index="indexes/photos", weights="net.ckpt")
    with alexsearch.open_index("indexes/photos") as ix:
        for hit in ix.query("cat.jpg", k=6)[0].hits:
            print(hit.rank, hit.distance, hit.path)

`import alexsearch` imports neither torch nor FAISS: each name below is loaded from
alexsearch.api on first use, and a CPU query never imports torch.
"""

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "build_index": "api",
    "build_codes": "api",
    "open_index": "api",
    "classify": "api",
    "Index": "api",
    "IndexSummary": "index.build",
    "CodesSummary": "index.codes",
    "QueryResult": "index.search",
    "Hit": "index.search",
    "LabelResult": "index.search",
    "Classification": "evaluate.predict",
    "Progress": "progress",
    "UserError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alexsearch' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
