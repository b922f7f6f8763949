"""The paper's training recipe: settings (`config`), its SGD update and plateau schedule
(`sgd`), where it computes (`plan`: one device, a tower per device, or DDP under
torchrun), what a resumed run restores (`state`), and the loop (`loop`).

Imports torch.
"""
