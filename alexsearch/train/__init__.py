"""The paper's training recipe: settings (`config`), its SGD update and plateau schedule
(`sgd`), where it computes (`plan`: one device, a tower per device, or DDP under
torchrun), what a resumed run restores (`state`), what the network sees (`inputs`), a
run's start (`start`), one epoch's training and validation (`epoch`), and the run with its
checkpoints (`loop`).

Every module but `config` imports torch.
"""
