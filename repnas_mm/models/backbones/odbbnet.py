"""ODBBNet: a RepVGG-style plain network whose every KxK conv is an ODBB."""
import itertools
import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch import Tensor
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
        widths (list[int], optional): the output channels of every block,
            stem first (a width search's result, :mod:`repnas_mm.rep.widths`);
            default: the arch's stage widths. Where a block's input and
            output widths then differ, it has no identity branch (a searched
            architecture's is dropped there, with a warning).
        channels (list[list[int]], optional): the kept output channels of
            every block (a width search's result): the full-width network
            is built and each block's output gated to 0 outside them, which
            is what the search trained and what ships narrow
            (``tools/deploy.py``). Default: the ``channels`` a searched
            architecture in ``branches`` records, if any. Not with
            ``widths``.
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
                 online: bool = False,
                 quant_friendly: bool = False,
                 out_indices: Sequence[int] = (-1, ),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg=None,
                 *,
                 form: str = 'standard',
                 widths: Optional[Sequence[int]] = None,
                 channels: Optional[Sequence] = None):
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
        self._recorded_channels = None  # a searched architecture's

        shapes = self._block_shapes(in_channels, widths)
        self.widths = [cout for _, cout, _, _ in shapes]
        specs = self._block_branches(branches, shapes, widths is not None)
        layers = iter(
            ODBBLayer(cin, cout, kernel_size, stride, groups, spec,
                      weight_sharing, deploy, form=self.form)
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
        if channels is not None and widths is not None:
            raise ValueError('channels= gates the full-width network, '
                             'widths= builds a narrow one: give one')
        if channels is None and widths is None:
            channels = self._recorded_channels
        if channels is not None and not deploy:
            self.set_channels(channels)

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

    @staticmethod
    def arch_widths(arch: dict) -> List[int]:
        """The output channels of every block of an arch dict, stem first
        (the widths without a width search)."""
        return [arch['stem_channels']] + [
            out for out, num in zip(arch['channels'], arch['num_blocks'])
            for _ in range(num)]

    def _block_shapes(self, in_channels, widths=None):
        """(in, out, stride, groups) of every block, stem first."""
        arch = self.arch
        outs = self.arch_widths(arch)
        strides = [arch['stem_stride']] + [
            stride if j == 0 else 1
            for stride, num in zip(arch['strides'], arch['num_blocks'])
            for j in range(num)]
        groups = [1] + [arch['groups'] if i in arch['group_layers'] else 1
                        for i in range(1, len(outs))]
        if widths is not None:
            widths = [int(w) for w in widths]
            if len(widths) != len(outs):
                raise ValueError(f'{len(widths)} widths given for '
                                 f'{len(outs)} blocks')
            bad = [i for i, (w, g) in enumerate(zip(widths, groups))
                   if w < 1 or w % g]
            if bad:
                raise ValueError(f'width {widths[bad[0]]} of block {bad[0]} '
                                 'is not a positive multiple of its groups '
                                 f'({groups[bad[0]]})')
            outs = widths
        ins = [in_channels] + outs[:-1]
        return list(zip(ins, outs, strides, groups))

    def _block_branches(self, branches, shapes, narrowed=False) -> List:
        """One branch spec per block (a preset name or a strict list)."""
        if isinstance(branches, str) and branches.endswith(('.pth', '.pt')):
            # The architecture a RepNAS run's checkpoint carries (and, for
            # init_cfg=Pretrained without a checkpoint, its weights).
            from repnas_mm.checkpoint import architecture_in_checkpoint
            self.structure_checkpoint = branches
            branches = architecture_in_checkpoint(branches)
        self._recorded_channels = _recorded_channels(branches)
        per_block = branches_per_block(branches, shapes, self.arch_name)
        if narrowed:  # a searched architecture on searched widths
            per_block, dropped = _drop_illegal_identity(per_block, shapes)
            if dropped and not self.deploy:  # fused: nothing is lost
                warnings.warn(f'ODBBNet: the identity branch of {dropped} '
                              'block(s) is dropped: their input and output '
                              'widths differ')
        return per_block

    @property
    def out_channels(self) -> List[int]:
        """Channels of the outputs (the last block of each out stage)."""
        return self.outputs_of(self.arch, self.widths, self.out_indices)

    @staticmethod
    def outputs_of(arch: dict, widths: Sequence[int],
                   out_indices: Sequence[int]) -> List[int]:
        """The output channels of an arch dict at ``widths`` (every block's,
        stem first): the last block of each stage of ``out_indices``."""
        ends = list(itertools.accumulate(arch['num_blocks']))
        return [widths[ends[i]] for i in out_indices]

    def set_channel_gates(self, gates: Optional[Sequence]):
        """Multiply every block's output (after ReLU) by a per-channel gate
        (one tensor per block, stem first), or by nothing (None)."""
        layers = self.layers()
        if gates is None:
            gates = [None] * len(layers)
        if len(gates) != len(layers):
            raise ValueError(f'{len(gates)} gates for {len(layers)} blocks')
        for layer, gate in zip(layers, gates):
            layer.set_channel_gate(gate)

    def set_channels(self, channels: Sequence):
        """Gate every block's output to its kept channels (0/1; None or a
        block's None: all)."""
        if len(channels) != len(self.widths):
            raise ValueError(f'{len(channels)} channel lists for '
                             f'{len(self.widths)} blocks')
        gates = []
        for i, (kept, width) in enumerate(zip(channels, self.widths)):
            if kept is None:
                gates.append(None)
                continue
            index = torch.as_tensor(list(kept), dtype=torch.long)
            if len(index) == 0 or index.min() < 0 or index.max() >= width:
                raise ValueError(f'block {i} keeps channels outside its '
                                 f'width {width}')
            gate = torch.zeros(width)
            gate[index] = 1.0
            gates.append(gate)
        self.set_channel_gates(gates)

    def kept_channels(self) -> Optional[List[Optional[Tensor]]]:
        """Each block's kept channels (its gate's nonzero entries; None:
        ungated), or None when no block is gated."""
        gates = [layer.channel_gate for layer in self.layers()]
        if all(g is None for g in gates):
            return None
        return [None if g is None else
                torch.nonzero(g.detach() != 0).flatten().cpu()
                for g in gates]

    def layers(self) -> List['ODBBLayer']:
        """Every layer (ODBB + ReLU), stem first."""
        return [self.stem] + [layer for name in self.stages
                              for layer in getattr(self, name)]

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


def _recorded_channels(branches):
    """The kept channels a searched architecture records, or None."""
    from repnas_mm.rep.arch import Architecture, is_arch_file, load_arch
    if isinstance(branches, dict) and 'blocks' in branches:
        return branches.get('channels')
    if isinstance(branches, Architecture):
        return branches.extra.get('channels')
    if is_arch_file(branches):
        return load_arch(branches).extra.get('channels')
    return None


def _drop_illegal_identity(per_block, shapes):
    out, dropped = [], 0
    for spec, (cin, cout, stride, _) in zip(per_block, shapes):
        if not isinstance(spec, str) and 'identity' in spec and (
                cin != cout or stride != 1):
            spec = tuple(n for n in spec if n != 'identity')
            dropped += 1
        out.append(spec)
    return out, dropped


class ODBBLayer(nn.Module):
    """An ODBB (of ``form``, :mod:`repnas_mm.rep.forms`) followed by ReLU:
    one layer of ODBBNet. A width search multiplies its output by a
    per-channel gate (:meth:`set_channel_gate`)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, groups,
                 branches, weight_sharing, deploy, online=False,
                 quant_friendly=False, *, form='standard'):
        super().__init__()
        form = resolve_form(form, online, quant_friendly, 'ODBBLayer')
        self.conv = build_odbb(in_channels, out_channels, kernel_size,
                               stride, groups, branches, weight_sharing,
                               deploy, form=form)
        self.act = nn.ReLU(inplace=True)
        self.channel_gate: Optional[Tensor] = None

    def set_channel_gate(self, gate: Optional[Tensor]):
        """Multiply the output channels by ``gate`` (shape ``(out,)``), or by
        nothing (None)."""
        out = self.conv.out_channels
        if gate is not None and gate.shape != (out, ):
            raise ValueError(f'a channel gate must have shape ({out},), got '
                             f'{tuple(gate.shape)}')
        self.channel_gate = gate

    def forward(self, x):
        y = self.act(self.conv(x))
        if self.channel_gate is None:
            return y
        return y * self.channel_gate.reshape(1, -1, 1, 1).to(y)
