"""Pictures, drawn with Pillow (each function returns a PIL image; the caller saves it):
conv1 kernels (`kernels`, the paper's Fig. 3), neighbour grids (`neighbours`, Fig. 4),
t-SNE maps (`tsne`), training curves (`curves`); `draw` holds what they share.

Imports neither torch nor FAISS (t-SNE imports openTSNE or scikit-learn when called).
"""
