"""Network weights on disk: the checkpoint file (`checkpoint`: one reader and validator,
weights + architecture + preprocessing + class names + fingerprint), its zip read
without torch (`checkpoint_file`), Caffe's and torchvision's published files
(`caffemodel`, `importers`), downloading them (`fetch`), and which weights a command
uses (`locations`).

`checkpoint_file`, `caffemodel` and `locations` never import torch.
"""
