"""Networks for distillation and cross-architecture evaluation: convnet, resnet18, vgg11, alexnet, lenet, mlp.

``create_net(name, channels, num_classes, im_size, **options)``; every net offers ``forward_features``
((B, C, H, W) -> (B, D)), ``forward_head`` ((B, D) -> (B, num_classes)) and ``num_features`` (D).
"""

from haba_core.nets import convnet, others, resnet  # noqa: F401  (registers the architectures)
from haba_core.nets.convnet import ConvNet
from haba_core.nets.layers import FeatureNet, make_act, make_norm, make_pool
from haba_core.nets.others import MLP, VGG11, AlexNet, LeNet
from haba_core.nets.registry import NETS, create_net, list_nets, net_options
from haba_core.nets.resnet import ResNet18

__all__ = [
    "NETS",
    "AlexNet",
    "ConvNet",
    "FeatureNet",
    "LeNet",
    "MLP",
    "ResNet18",
    "VGG11",
    "create_net",
    "list_nets",
    "make_act",
    "make_norm",
    "make_pool",
    "net_options",
]
