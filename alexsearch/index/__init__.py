"""The index on disk and what reads and writes it: catalogue (SQLite), manifest, writer
lock, FAISS vectors (`vectors`), binary codes and their autoencoder (`codes`,
`autoencoder`), fc7 extraction (`extract`), the incremental build (`build`), a query
image's embedding (`embed`), search over a published snapshot (`search`, by label
too), each photo's top-5 classes from its stored fc7 (`labels`) and the words that name
a class (`classnames`), and what `info` says (`info`).

torch is imported only when it computes: extraction (a build with work to do), the
autoencoder, and a query embedded on a GPU or from a checkpoint the torch-free reader
leaves to torch. Search over a published index needs FAISS and numpy.
"""

# Images a forward: the paper's training batch. The fully connected layers read their 58M
# weights once a batch, so a larger batch spreads that read: on a 2-core AVX512_BF16 CPU,
# 128 ran the forward 1.04-1.56x as fast as 32 (bench/index_throughput.py, "choices"),
# at ~1.3 GB of peak memory in bf16.
BATCH = 128
