"""Evaluation: classification error (top-1/top-5, centre and ten-crop) and retrieval
precision (precision@k and mAP over an index, parent folder as label)."""

from __future__ import annotations

# --------------------------------------------------------------------------- classification


# --------------------------------------------------------------------------- retrieval
