"""The index on disk and what reads and writes it: catalogue (SQLite), manifest, writer
lock, FAISS vectors, binary codes and their autoencoder, fc7 extraction, the
incremental build, and search.

torch is imported only by extraction (`extract`, `build` when there is work) and by the
autoencoder (`autoencoder`); search over a published index needs FAISS and numpy.
"""
