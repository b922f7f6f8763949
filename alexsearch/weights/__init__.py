"""Network weights on disk: the checkpoint (`checkpoint`: one reader and validator for
weights + architecture + preprocessing + class names + fingerprint; `checkpoint_file`,
its zip read without torch), Caffe's and torchvision's published files (`caffemodel`,
`importers`), downloading them (`fetch`), and which weights a command uses
(`locations`).

Reading a checkpoint and importing a caffemodel need no torch; writing a checkpoint,
making torch tensors (`checkpoint.load`) and importing a torchvision .pth import it.
"""
