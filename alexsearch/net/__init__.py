"""The network: its architecture record (`arch`, torch-free), the torch network with its
one-device and two-device plans (`alexnet`), the device a --device value names
(`devices`), the arithmetic it runs in and torch's CUDA flags for it (`precision`,
torch-free until it sets them), and fc7 with numpy alone for queries (`numpy_net`,
torch-free).
"""
