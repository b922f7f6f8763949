"""The torch side of the input, shared by training and evaluation: the 256 image as a
tensor and its crops (`crops`), the paper's PCA lighting (`lighting`), and batches of
labelled photos (`loader`).

Imports torch.
"""
