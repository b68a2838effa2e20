"""Writes the checkpoints of ``tests/test_legacy_forms.py``: one per ODBB form.

Run once, at commit caf2453 (before ODBB forms became classes, issue 31), from
the repository root: ``python tests/data/legacy_forms/make.py``. The files
record what that version saved, so that later versions are tested against
it: do not re-run it with a newer version (it would test nothing).

For each form (``standard``, ``online``, ``quant_friendly``, chosen then by
the booleans ``online`` / ``quant_friendly``):

- ``odbbnet_<form>.pth``: an mmengine-style checkpoint of a tiny ODBBNet
  (``backbone.``-prefixed state dict; random weights and BN statistics,
  some branches pruned so the saved branch mask matters), with the eval
  outputs on a fixed input;
- ``converted_<form>.pth``: a small Conv+BN CNN after ``convert_to_odbb``
  with that form and one branch grown, and its eval outputs.
"""
import os.path as osp

import torch
import torch.nn as nn

from repnas_mm.models.backbones.odbbnet import ODBBNet
from repnas_mm.rep import named_odbbs
from repnas_mm.rep.convert import convert_to_odbb
from repnas_mm.rep.surgery import grow

HERE = osp.dirname(osp.abspath(__file__))
ARCH = dict(name='legacy', stem_channels=8, channels=(8, 16), num_blocks=(2, 1),
            strides=(2, 2))
FORMS = {'standard': {}, 'online': dict(online=True),
         'quant_friendly': dict(quant_friendly=True)}


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16))


def main():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for i, (form, flags) in enumerate(FORMS.items()):
        torch.manual_seed(i)
        net = ODBBNet(ARCH, branches='full', weight_sharing=form != 'online', **flags)
        randomize(net, i)
        for j, block in enumerate(net.blocks()):
            keep = [n for k, n in enumerate(block.branch_names) if (k + j) % 3 != 1]
            block.active = keep or block.branch_names[:1]
        net.eval()
        with torch.no_grad():
            out = net(x)[-1]
        state = {'backbone.' + k: v for k, v in net.state_dict().items()}
        torch.save(dict(state_dict=state, meta=dict(form=form, arch=ARCH), input=x,
                        output=out), osp.join(HERE, f'odbbnet_{form}.pth'))

        torch.manual_seed(10 + i)
        cnn = tiny_cnn()
        randomize(cnn, 10 + i)
        convert_to_odbb(cnn, torch.zeros(1, 3, 16, 16), branches='dbb', **flags)
        grow(list(named_odbbs(cnn).values())[1], ['1x1'])
        randomize(cnn, 20 + i)
        cnn.eval()
        with torch.no_grad():
            out = cnn(x)
        torch.save(dict(state_dict=cnn.state_dict(), meta=dict(form=form), input=x,
                        output=out), osp.join(HERE, f'converted_{form}.pth'))


if __name__ == '__main__':
    main()
