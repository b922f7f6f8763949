"""Photos before the network, without torch: which files are images (`files`), the
folders they sit in (`folders`), decoding (`decode`), the paper's 256/224 geometry
(`geometry`) and the input convention stored with the weights (`preprocess`).

Imports neither torch nor FAISS: the torch-free query path is built on this package.
"""
