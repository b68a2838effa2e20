"""ODBBNet: a RepVGG-style plain network whose every KxK conv is an ODBB."""
from typing import List, Sequence

import torch.nn as nn
import torch.utils.checkpoint as cp
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from torch.nn.modules.batchnorm import _BatchNorm

from repnas_mm.errors import UserError
from repnas_mm.registry import register_model
from repnas_mm.rep import ODBB, build_odbb, named_odbbs
from repnas_mm.rep.arch import branches_per_block
from repnas_mm.rep.forms import resolve_form

from ..loading import load_pretrained

_GROUPED = tuple(range(2, 27, 2))  # RepVGG's interleaved group-conv layers


def _repvgg(stem, channels, num_blocks, groups=1):
    return dict(
        stem_channels=stem,
        stem_stride=2,
        channels=channels,
        num_blocks=num_blocks,
        strides=(2, 2, 2, 2),
        group_layers=_GROUPED if groups > 1 else (),
        groups=groups)


_A, _B = (2, 4, 14, 1), (4, 6, 16, 1)


@register_model
class ODBBNet(BaseBackbone):
    """RepVGG layouts (and VGG-16) built from ODBB blocks (RepNAS Sec. 4.2).

    Every KxK conv, the stem included, is an :class:`~repnas_mm.rep.ODBB`
    followed by ReLU. Fused (``deploy=True`` or after ``switch_to_deploy``)
    it is layer for layer the same network as mmpretrain's RepVGG deploy.

    Args:
        arch (str | dict): a key of :attr:`arch_settings` or a dict like one.
        in_channels (int): input image channels.
        branches (str | list | dict): what every block is trained with:
            a preset name (``plain``, ``repvgg``, ``acb``, ``dbb``, ``full``),
            a list of branch names for every block (filtered to the legal
            ones per block, like a preset), a per-block list of lists
            (checked strictly), a searched architecture (a ``.json``
            path, its dict, an ``Architecture``, or the ``.pth`` checkpoint
            of a RepNAS run, which carries it), or
            ``dict(type='random', budget=C, seed=0)``: the paper's random
            baseline, ``C`` branches in all (an int, or a float ratio of all
            legal branches).
        kernel_size (int): K of every block (odd).
        weight_sharing (bool): RepNAS Eq. 5 weight sharing inside blocks.
        form (str): the blocks' form (all fuse to the same deploy network):
            ``'standard'``; ``'online'`` (OREPA, :class:`OnlineODBB`): every
            block composes its branches into one kernel each forward pass
            and runs one conv + one BN (branch BNs become per-channel
            scales), so a training step costs about a plain network's;
            ``'quant_friendly'`` (QARepVGG's changes for the seven branches,
            :class:`QuantFriendlyODBB`: no BN on ``identity``, ``1x1``,
            ``1xk``, ``kx1``, one BN after the sum), for networks shipped
            in INT8.
        online, quant_friendly (bool): deprecated aliases of ``form``.
        out_indices (Sequence[int]): stages whose outputs are returned.
        frozen_stages (int): freeze the stem (0) and the first stages.
        norm_eval (bool): keep BN layers in eval mode during training.
        with_cp (bool): gradient checkpointing per block (saves memory).
        deploy (bool): build the fused single-conv form directly.
        init_cfg (dict | list[dict], optional): mmengine initialisation.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``
            is handled here: the checkpoint must hold every tensor of this
            structure (extra ones, such as branches a search pruned, are
            ignored) or loading stops with an error naming what is missing;
            a multi-branch checkpoint loads into ``deploy=True`` by fusing.
            Without ``checkpoint``, the one ``branches`` names: one setting
            says which classification run a detector starts from.
    """

    arch_settings = {
        'A0': _repvgg(48, (48, 96, 192, 1280), _A),
        'A1': _repvgg(64, (64, 128, 256, 1280), _A),
        'A2': _repvgg(64, (96, 192, 384, 1408), _A),
        'B0': _repvgg(64, (64, 128, 256, 1280), _B),
        'B1': _repvgg(64, (128, 256, 512, 2048), _B),
        'B1g2': _repvgg(64, (128, 256, 512, 2048), _B, groups=2),
        'B1g4': _repvgg(64, (128, 256, 512, 2048), _B, groups=4),
        'B2': _repvgg(64, (160, 320, 640, 2560), _B),
        'B2g2': _repvgg(64, (160, 320, 640, 2560), _B, groups=2),
        'B2g4': _repvgg(64, (160, 320, 640, 2560), _B, groups=4),
        'B3': _repvgg(64, (192, 384, 768, 2560), _B),
        'B3g2': _repvgg(64, (192, 384, 768, 2560), _B, groups=2),
        'B3g4': _repvgg(64, (192, 384, 768, 2560), _B, groups=4),
        # VGG-16's 13 convs for 32x32 CIFAR input (RepNAS Table 3).
        'vgg16': dict(
            stem_channels=64,
            stem_stride=1,
            channels=(64, 128, 256, 512, 512),
            num_blocks=(1, 2, 3, 3, 3),
            strides=(1, 2, 2, 2, 2),
            group_layers=(),
            groups=1),
    }

    def __init__(self,
                 arch='A0',
                 in_channels: int = 3,
                 branches='full',
                 kernel_size: int = 3,
                 weight_sharing: bool = True,
                 form: str = 'standard',
                 online: bool = False,
                 quant_friendly: bool = False,
                 out_indices: Sequence[int] = (-1, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg)
        self.arch_name, self.arch = self._parse_arch(arch)
        self.kernel_size = kernel_size
        self.weight_sharing = weight_sharing
        self.form = resolve_form(form, online, quant_friendly)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.deploy = deploy
        self.structure_checkpoint = None  # set when branches= names a .pth

        shapes = self._block_shapes(in_channels)
        specs = self._block_branches(branches, shapes)
        layers = iter(
            ODBBLayer(cin, cout, kernel_size, stride, groups, spec,
                      weight_sharing, deploy, self.form)
            for (cin, cout, stride, groups), spec in zip(shapes, specs))
        self.stem = next(layers)
        self.stages = []
        for i, num_blocks in enumerate(self.arch['num_blocks']):
            name = f'stage_{i + 1}'
            self.add_module(
                name, nn.Sequential(*[next(layers)
                                      for _ in range(num_blocks)]))
            self.stages.append(name)
        num_stages = len(self.stages)
        for i in out_indices:
            if not -num_stages <= i < num_stages:
                raise ValueError(f'out_indices {tuple(out_indices)} out of '
                                 f'range for {num_stages} stages')
        self.out_indices = tuple(i % num_stages for i in out_indices)
        self._freeze_stages()

    # -- construction ------------------------------------------------------
    def _parse_arch(self, arch):
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'unknown ODBBNet arch {arch!r}; choose '
                                 f'from {sorted(self.arch_settings)}')
            return arch, self.arch_settings[arch]
        if isinstance(arch, dict):
            required = {'stem_channels', 'channels', 'num_blocks', 'strides'}
            missing = required - set(arch)
            if missing:
                raise ValueError(f'arch dict lacks {sorted(missing)}')
            arch = dict(
                dict(stem_stride=2, group_layers=(), groups=1), **arch)
            return arch.get('name'), arch
        raise TypeError(f'arch must be a name or a dict, got {type(arch)}')

    def _block_shapes(self, in_channels):
        """(in, out, stride, groups) of every block, stem first."""
        arch = self.arch
        shapes = [(in_channels, arch['stem_channels'], arch['stem_stride'],
                   1)]
        channels, index = arch['stem_channels'], 1
        for out, num, stride in zip(arch['channels'], arch['num_blocks'],
                                    arch['strides']):
            for j in range(num):
                groups = arch['groups'] if index in arch[
                    'group_layers'] else 1
                shapes.append((channels, out, stride if j == 0 else 1,
                               groups))
                channels, index = out, index + 1
        return shapes

    def _block_branches(self, branches, shapes) -> List:
        """One branch spec per block (a preset name or a strict list)."""
        if isinstance(branches, str) and branches.endswith(('.pth', '.pt')):
            # The architecture a RepNAS run's checkpoint carries (and, for
            # init_cfg=Pretrained without a checkpoint, its weights).
            from repnas_mm.checkpoint import architecture_in_checkpoint
            self.structure_checkpoint = branches
            branches = architecture_in_checkpoint(branches)
        return branches_per_block(branches, shapes, self.arch_name)

    # -- initialisation from a checkpoint ----------------------------------
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            checkpoint = cfg.get('checkpoint') or self.structure_checkpoint
            if checkpoint is None:
                raise UserError(
                    "init_cfg=dict(type='Pretrained') needs a checkpoint, "
                    'or branches= naming the checkpoint of a RepNAS run')
            if not getattr(self, '_is_init', False):
                self.load_pretrained(checkpoint, cfg.get('prefix'))
                self._is_init = True
            return
        super().init_weights()

    def load_pretrained(self, checkpoint: str, prefix: str = None):
        """Load this backbone's weights from a (classification) checkpoint
        (:func:`repnas_mm.models.loading.load_pretrained`)."""
        from mmengine.logging import print_log
        done = load_pretrained(self, checkpoint, prefix)
        print_log(f'ODBBNet-{self.arch_name}: {done}', logger='current')

    # -- running -----------------------------------------------------------
    def forward(self, x):
        x = self._run(self.stem, x)
        outs = []
        for i, name in enumerate(self.stages):
            for layer in getattr(self, name):
                x = self._run(layer, x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def _run(self, layer, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            self.stem.eval()
            for param in self.stem.parameters():
                param.requires_grad = False
        for i in range(self.frozen_stages):
            stage = getattr(self, self.stages[i])
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self):
        """Fuse every block into one conv. Idempotent."""
        for m in self.modules():
            if isinstance(m, ODBB):
                m.switch_to_deploy()
        self.deploy = True

    def blocks(self) -> List[ODBB]:
        """Every ODBB of the network, stem first (the search's order)."""
        return list(named_odbbs(self).values())


class ODBBLayer(nn.Module):
    """An ODBB (of ``form``, :mod:`repnas_mm.rep.forms`) followed by ReLU:
    one layer of ODBBNet."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, groups,
                 branches, weight_sharing, deploy, form='standard',
                 online=False, quant_friendly=False):
        super().__init__()
        form = resolve_form(form, online, quant_friendly, 'ODBBLayer')
        self.conv = build_odbb(in_channels, out_channels, kernel_size,
                               stride, groups, branches, weight_sharing,
                               deploy, form=form)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.conv(x))
