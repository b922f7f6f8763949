"""The index on disk and what reads and writes it: catalogue (SQLite), manifest, writer
lock, FAISS vectors (`vectors`), binary codes and their autoencoder (`codes`,
`autoencoder`), fc7 extraction (`extract`), the incremental build (`build`), a query
image's embedding (`embed`), search over a published snapshot (`search`), and what
`info` says (`info`).

torch is imported only when it computes: extraction (a build with work to do), the
autoencoder, and a query embedded on a GPU or from a checkpoint the torch-free reader
leaves to torch. Search over a published index needs FAISS and numpy.
"""
