"""The PyTorch module behind ``two_conv.onnx``: conv0 (3->8) then conv1 (8->4), 3x3
kernels, padding 1. Its state_dict names are the model's initializer names, so
``torch_export_check`` loads the model's weights into it:

    surgeon run torch_export_check sample_models/two_conv.onnx \\
        --param module=sample_models/two_conv.py:TwoConv -o out.onnx
"""

import torch


class TwoConv(torch.nn.Module):
    """conv0 -> conv1, the mission's two-conv example."""

    def __init__(self):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv1(self.conv0(x))
