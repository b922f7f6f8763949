"""The index on disk and what reads and writes it: catalogue (SQLite), manifest, writer
lock, FAISS vectors (`vectors`), binary codes and their autoencoder (`codes`,
`autoencoder`), fc7 extraction (`extract`), the incremental build (`build`), a query
image's embedding (`embed`), search over a published snapshot (`search`), and what
`info` says (`info`).

torch is imported only when it computes: extraction (a build with work to do), the
autoencoder, and a query embedded on a GPU or from a checkpoint the torch-free reader
leaves to torch. Search over a published index needs FAISS and numpy.
"""

# Images a forward: the paper's training batch. On a 2-core CPU with bf16, 128 ran the
# forward ~1.4x faster than 32 (bench/index_throughput.py, "choices": the fully connected
# layers read their 58M weights once a batch), at ~1.3 GB of peak memory.
BATCH = 128
