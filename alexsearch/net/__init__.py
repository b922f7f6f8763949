"""The network: its architecture record (`arch`, torch-free), the torch network with its
one-device and two-device plans (`alexnet`), the device a --device value names
(`devices`), and fc7 with numpy alone for queries (`numpy_net`, torch-free).
"""
