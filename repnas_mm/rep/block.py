"""ODBB: a KxK conv (+BN) trained as a set of parallel linear branches.

The block knows only which of its branches are active and, optionally, the
gate value each branch output is multiplied by. Who decides those (a RepNAS
search, DyRep, a fixed preset) is not the block's business: a search sets
``block.active`` and ``block.gates`` from outside every iteration.

A block comes in one of three *forms*, each a class: :class:`ODBB` (the
standard form), :class:`QuantFriendlyODBB` (here) and
:class:`~.online.OnlineODBB`. They differ in how the branches are built,
run and composed, never in what they fuse to; :mod:`.forms` chooses one by
name. The form is saved with the weights (``branch_form``, as the branch
mask is) and gone after fusion.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .branches import (BRANCH_NAMES, Branch, NormLayer, build_branch,
                       fuse_conv_bn, new_kernel)
from .presets import BranchSpec, canonical, resolve_branches
from .transforms import KernelBias, add_branches

#: The main branch: the KxK conv (+BN) a block replaces, and the one that
#: DyRep's growth and absorption adjust.
MAIN = 'kxk'
# Branches whose conv kernel can be a centre crop of the main KxK kernel.
SHAREABLE = ('1x1', 'kxk', '1x1_kxk', '1x1_avg', '1xk', 'kx1')
#: Every block form by name, in the order of the codes saved in
#: ``branch_form``.
FORM_NAMES = ('standard', 'online', 'quant_friendly')


class ODBB(nn.Module):
    """Optimal diverse branch block (RepNAS Sec. 3.2), the standard form.

    Replaces ``Conv2d(in, out, K, stride, K // 2, groups=groups, bias=False)
    + BN``; no activation. In training it is the sum of its active branches,
    each followed by its own BN; :meth:`kernel_bias` gives the one
    equivalent KxK conv, and :meth:`switch_to_deploy` turns the block into
    it.

    A form is a subclass that sets :attr:`form` and what differs: the
    branches without a BN of their own (:attr:`NORM_FREE`), one BN after
    the sum (:attr:`POST_NORM`), or, for a form that composes kernels
    instead of running branches, :meth:`_build_branch`,
    :meth:`_forward_branches` and :meth:`_kernel_bias_branches`
    (:class:`~.online.OnlineODBB`).

    Args:
        in_channels, out_channels (int): channels.
        kernel_size (int): odd K. Padding is ``K // 2``.
        stride (int): 1 or more.
        groups (int): conv groups, dividing both channel counts.
        branches (str | list[str]): a preset name (``plain``, ``repvgg``,
            ``acb``, ``dbb``, ``full``; filtered to the branches legal here)
            or an explicit list of branch names (checked strictly).
        weight_sharing (bool): conv branches take their kernels from one main
            KxK kernel (RepNAS Eq. 5); each branch keeps its own BN (or,
            online, its own scale).
        deploy (bool): build the fused single conv directly (so that fused
            checkpoints load strictly).
        online, quant_friendly (bool): the booleans that chose a form before
            forms were classes: ``True`` is a ``TypeError`` naming the class
            to use (:mod:`.forms`).
        norm_layer: builds a BN from a channel count (the branches' BNs, and
            the one BN after the sum of the forms that have it).
    """

    #: The form's name (:data:`FORM_NAMES`).
    form = 'standard'
    #: Branches built without a BN of their own.
    NORM_FREE: tuple = ()
    #: Whether one BN (``self.bn``) follows the sum of the branches.
    POST_NORM = False
    #: ``a`` of the kaiming-uniform initialisation of a shared main kernel.
    kaiming_a = Branch.kaiming_a

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int = 3,
                 stride: int = 1,
                 groups: int = 1,
                 branches: BranchSpec = 'full',
                 weight_sharing: bool = True,
                 deploy: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 online: bool = False,
                 quant_friendly: bool = False):
        super().__init__()
        old = {'online': ('OnlineODBB', online),
               'quant_friendly': ('QuantFriendlyODBB', quant_friendly)}
        for name, (cls, flag) in old.items():
            if flag:  # the booleans of the blocks before forms were classes
                raise TypeError(
                    f"{type(self).__name__}({name}=True): the {name} form is "
                    f"a class now: use build_odbb(..., form='{name}') (or "
                    f'{cls}(...))')
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'groups={groups} must divide in_channels='
                             f'{in_channels} and out_channels={out_channels}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.weight_sharing = weight_sharing
        self.branch_names = resolve_branches(branches, in_channels,
                                             out_channels, stride)
        self._active = self.branch_names
        self.gates: Optional[Tensor] = None
        self.deploy = deploy
        self.bn = None  # the one BN after the sum (POST_NORM)
        if deploy:
            self.fused_conv = self._make_fused_conv()
            self.register_buffer(self.MASK, None)
            self.register_buffer(self.FORM, None)
            return
        self.fused_conv = None
        share = weight_sharing and any(n in SHAREABLE
                                       for n in self.branch_names)
        # Initialised as the branches' own kernels are.
        self.weight = new_kernel(out_channels, in_channels // groups,
                                 kernel_size, kernel_size,
                                 self.kaiming_a) if share else None
        self.branches = nn.ModuleDict({
            name: self._build_branch(name, share and name in SHAREABLE,
                                     norm_layer)
            for name in self.branch_names
        })
        if self.POST_NORM:
            self.bn = norm_layer(out_channels)
        self.register_buffer(self.MASK, self._mask())
        self.register_buffer(self.FORM, self._form_code())

    def _build_branch(self, name: str, shared: bool,
                      norm_layer: NormLayer) -> Branch:
        return build_branch(name, self.in_channels, self.out_channels,
                            self.kernel_size, self.stride, self.groups,
                            shared, norm_layer,
                            norm=name not in self.NORM_FREE)

    def _make_fused_conv(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.kernel_size // 2,
            groups=self.groups,
            bias=True)

    # -- the state a search policy drives -------------------------------
    @property
    def active(self) -> tuple:
        """Names of the branches that run, in canonical order."""
        return self._active

    @active.setter
    def active(self, names: Sequence[str]):
        names = canonical(list(names))
        if not names:
            raise ValueError('a block needs at least one active branch')
        missing = [n for n in names if n not in self.branch_names]
        if missing:
            raise ValueError(f'branch {missing[0]!r} is not in this block '
                             f'(it has {self.branch_names})')
        self._active = names

    # -- the architecture travels with the weights -------------------------
    # ``branch_mask`` (bool, one entry per branch type of BRANCH_NAMES: kept
    # or not; the same length whatever the block built) is saved with the
    # weights, so that a loader that knows nothing of repnas_mm and fuses
    # after loading (mmdeploy's build_pytorch_model calls switch_to_deploy)
    # fuses the branches a search kept, not every branch the config built.
    # A buffer, not extra state: state dicts stay all tensors (EMA, .to(),
    # tools that clone them). It is written from ``active`` when saving and
    # read into ``active`` when loading; RepNASHook saves the searched
    # architecture in it (mid-search, ``active`` is only the last sampled
    # mask). ``branch_form`` (uint8, the index of the form in FORM_NAMES)
    # says which form the weights are of; a block refuses another form's.
    # Checkpoints from before either existed load without them (strictly
    # too). A fused block has neither, so fused checkpoints are, tensor for
    # tensor, RepVGG deploy's.
    MASK = 'branch_mask'
    FORM = 'branch_form'
    #: Tensors a checkpoint may lack (saved by this version, not before).
    OPTIONAL = (MASK, FORM)

    def _mask(self) -> Tensor:
        return torch.tensor([n in self._active for n in BRANCH_NAMES])

    def _form_code(self) -> Tensor:
        return torch.tensor(FORM_NAMES.index(self.form), dtype=torch.uint8)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.branch_mask is not None:
            self.branch_mask.copy_(self._mask())
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        code = state_dict.get(prefix + self.FORM)
        if self.branch_form is not None and code is not None:
            saved = FORM_NAMES[int(code)] if 0 <= int(code) < len(
                FORM_NAMES) else f'unknown ({int(code)})'
            if saved != self.form:
                raise ValueError(f'{prefix or "the block"} holds weights of '
                                 f'the {saved} form, this block is '
                                 f'{self.form}')
        mask = state_dict.get(prefix + self.MASK)
        if self.branch_mask is not None and mask is not None and \
                mask.shape == self.branch_mask.shape:
            # ValueError if it keeps a branch this block did not build.
            self.active = [n for n, keep in zip(BRANCH_NAMES, mask.tolist())
                           if keep]
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        optional = {prefix + key for key in self.OPTIONAL}
        missing_keys[before:] = [k for k in missing_keys[before:]
                                 if k not in optional]

    def set_gates(self, gates: Optional[Tensor]):
        """Multiply each branch output by a gate (or ``None``: by nothing).

        ``gates`` has one entry per name in :attr:`branch_names`; entries of
        inactive branches are ignored.
        """
        if gates is not None and gates.shape != (len(self.branch_names), ):
            raise ValueError(f'gates must have shape '
                             f'({len(self.branch_names)},), got '
                             f'{tuple(gates.shape)}')
        self.gates = gates

    def _gate(self, i: int) -> Optional[Tensor]:
        return None if self.gates is None else self.gates[i]

    # -- training-time form ---------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.fused_conv is not None:
            return self.fused_conv(x)
        return self._forward_branches(x)

    def _forward_branches(self, x: Tensor) -> Tensor:
        out = None
        for i, name in enumerate(self.branch_names):
            if name not in self._active:
                continue  # pruned: neither run forward nor backward
            y = self.branches[name](x, self.weight, self._gate(i))
            out = y if out is None else out + y
        return out if self.bn is None else self.bn(out)

    # -- fusion -----------------------------------------------------------
    def kernel_bias(self) -> KernelBias:
        """The KxK ``(kernel, bias)`` equal to the active branches in eval.

        Differentiable with respect to the branch parameters and gates. The
        branches' verb, on purpose: nothing here is called ``fuse``, which
        timm's ``reparameterize_model`` expects to return a module; its
        walker reaches ODBBs through :meth:`switch_to_deploy`.
        """
        if self.fused_conv is not None:
            conv = self.fused_conv
            # A conv with a kernel of its own making (a refocused conv,
            # RefConv: its weight is the frozen base) says it by kernel().
            kernel = getattr(conv, 'kernel', None)
            return (kernel() if callable(kernel) else conv.weight), conv.bias
        return self._kernel_bias_branches()

    def _kernel_bias_branches(self) -> KernelBias:
        parts = []
        for i, name in enumerate(self.branch_names):
            if name not in self._active:
                continue
            kernel, bias = self.branches[name].kernel_bias(self.weight)
            gate = self._gate(i)
            if gate is not None:
                kernel, bias = kernel * gate, bias * gate
            parts.append((kernel, bias))
        kernel, bias = add_branches(parts)
        if self.bn is None:
            return kernel, bias
        return fuse_conv_bn(kernel, self.bn, bias)  # the post-BN

    def switch_to_deploy(self):
        """Replace the branches by one conv. Idempotent."""
        if self.fused_conv is not None:
            return
        with torch.no_grad():
            kernel, bias = self.kernel_bias()
        conv = self._make_fused_conv().to(kernel.device, kernel.dtype)
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        del self.branches
        self.bn = None
        self.branch_mask = None
        self.branch_form = None
        self.weight = None
        self.gates = None
        self.branch_names = self._active
        self.fused_conv = conv
        self.deploy = True

    # -- a trained Conv+BN pair as the main branch (convert_to_odbb) -------
    def load_stock(self, conv: nn.Conv2d, bn: nn.Module):
        """Make the block compute ``bn(conv(x))`` with only its main branch
        active: the ``kxk`` kernel takes the conv's, the BN's state goes to
        the main branch's BN (or to the one BN after the sum, the main
        branch's own output scale then made exactly 1:
        :meth:`_neutral_main`).

        A conv bias ``b`` is folded into the BN's running mean (``mean -
        b``): exact in eval mode, and in training the batch mean absorbs
        ``b`` anyway.
        """
        main = self.branches[MAIN]
        with torch.no_grad():
            (self.weight if self.weight is not None else main.weight).copy_(
                conv.weight)
        stats = bn.state_dict()  # a norm-act also holds its act's tensors
        norm = main.bn if self.bn is None else self.bn
        norm.load_state_dict({k: stats[k] for k in norm.state_dict()})
        with torch.no_grad():
            if conv.bias is not None:
                norm.running_mean.sub_(conv.bias)
            self._neutral_main()
        self.active = [MAIN]

    def _neutral_main(self):
        """After :meth:`load_stock`: the main branch's own output scale made
        exactly 1 in eval, for the forms whose one BN after the sum took the
        stock BN (the standard form's main BN is the stock BN itself)."""

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, '
                f'kernel_size={self.kernel_size}, stride={self.stride}, '
                f'groups={self.groups}, branches={self.active}, '
                f'weight_sharing={self.weight_sharing}, form={self.form}, '
                f'deploy={self.deploy}')


class QuantFriendlyODBB(ODBB):
    """The quantization-friendly form: QARepVGG's block (Chu et al.,
    AAAI'24) generalised to the seven branches.

    QARepVGG traces RepVGG-A0's fall under post-training INT8 quantization
    (72.4 to 52.2 top-1) to outlier weights in the fused kernel and to
    activation variance growing through the blocks. Our reading of where
    outliers come from: a branch BN scales the part of the fused kernel its
    branch covers by its own ``gamma / sigma``, so a few taps of some output
    channels get values far from the rest of the kernel (wide per-channel
    ranges, coarse INT8 steps). So (the mechanism is the two class
    attributes):

    - ``identity`` has no BN (QARepVGG): its BN's fused kernel is one tap,
      ``gamma / sigma`` of the input channel, unbounded as that channel's
      variance goes to 0; without it, the identity adds exactly 1 there.
    - ``1x1`` has no BN (QARepVGG), and for the same reason neither have
      ``1xk`` and ``kx1``: each adds to only part of the KxK support (the
      centre, the middle row, the middle column), and a BN of its own
      would rescale those taps independently of the rest of the kernel.
      Without a BN they are plain convs whose kernels add to those taps.
    - ``kxk``, ``1x1_kxk`` and ``1x1_avg`` keep their BNs: each covers the
      whole KxK support, so its BN scales whole kernel rows (per output
      channel) evenly, which per-channel weight quantization absorbs; and
      the BNs are what make the two-layer branches more than a
      re-parameterized KxK in training (DBB). QARepVGG keeps the KxK BN.
    - one BN after the sum (``self.bn``, QARepVGG's post-BN) normalises the
      block's output, bounding the variance the BN-free branches add.

    A search gate multiplies a BN-free conv branch's kernel (no extra pass
    over the feature map) and the BN-free identity's output; branches with
    a BN take it in their BN as usual. Fusion is exact (the branches' sum,
    then the post-BN folded in). Train with plain L2 weight decay (as every
    config here does), as QARepVGG does.
    """

    form = 'quant_friendly'
    NORM_FREE = ('1x1', '1xk', 'kx1', 'identity')
    POST_NORM = True

    def _neutral_main(self):
        bn = self.branches[MAIN].bn  # sigma = 1 exactly: an identity
        bn.running_var.fill_(1.0 - bn.eps)


def named_odbbs(model: nn.Module,
                fused: Optional[bool] = None) -> Dict[str, ODBB]:
    """Every ODBB of ``model`` by module name, in module order.

    ``fused=False``: only multi-branch blocks (what a search drives);
    ``fused=True``: only fused ones; ``None``: all.
    """
    return {
        name: m
        for name, m in model.named_modules() if isinstance(m, ODBB) and (
            fused is None or (m.fused_conv is not None) == fused)
    }
