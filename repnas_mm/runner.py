"""Build an mmengine ``Runner`` from command-line options.

Shared by ``tools/train.py`` and ``tools/test.py`` so both behave the same for
mmpretrain and mmdet configs: the config's ``default_scope`` decides which
registries are used; this module only merges options into the config.

CPU-only distributed runs (``--launcher pytorch`` under ``torchrun`` on a
machine without a GPU) need two things mmengine 0.10 does not do by itself:
a ``gloo`` process group created before the Runner (mmengine's ``init_dist``
calls ``torch.cuda.set_device``), and a DDP wrapper without ``device_ids``.
"""
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.config import DictAction
from mmengine.runner import Runner

from repnas_mm.checkpoint import CONFIG_KEY, allow_unsafe_checkpoints
from repnas_mm.config import read_config
from repnas_mm.errors import USER_ERRORS, UserError

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_common_args(parser):
    """Options shared by train and test."""
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--work-dir',
        help='where logs and checkpoints go '
        '(default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config keys, e.g. '
        'train_dataloader.batch_size=8 model.backbone.arch=A1')
    parser.add_argument(
        '--launcher',
        choices=LAUNCHERS,
        default='none',
        help='job launcher (use `pytorch` under torchrun)')
    # torchrun passes --local-rank; older launchers --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def config_from_args(args):
    """Read the config and merge the options every tool shares."""
    cfg = read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    use_safe_checkpoints(cfg)
    return cfg


def use_safe_checkpoints(cfg):
    """Write plain-data checkpoints; honour the config's unsafe opt-in."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(h.get('type') == 'SafeCheckpointHook' for h in hooks):
        hooks.append(dict(type='SafeCheckpointHook'))
    cfg.custom_hooks = hooks
    if cfg.get(CONFIG_KEY, False):
        allow_unsafe_checkpoints(True)


def enable_amp(cfg):
    """Switch the config's optimizer wrapper to mixed precision."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        return
    if wrapper != 'OptimWrapper':
        raise SystemExit(f'error: --amp needs optim_wrapper.type = '
                         f'OptimWrapper, the config has {wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def setup_resume(cfg, resume):
    """``--resume`` alone: latest checkpoint in work_dir; with a path: it."""
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


def prepare_cpu_distributed(cfg):
    """Make ``--launcher pytorch`` work without a GPU (gloo, no device_ids).

    A no-op when CUDA is available or the launcher is ``none``.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise SystemExit(f'error: launcher {cfg.launcher!r} needs CUDA; '
                         'on CPU use torchrun with --launcher pytorch')
    if not torch_dist.is_initialized():
        # The Runner skips its own init_dist when a group exists.
        torch_dist.init_process_group(backend='gloo')
    wrapper = dict(type='MMDistributedDataParallel', device_ids=None)
    wrapper.update(cfg.get('model_wrapper_cfg', None) or {})
    cfg.model_wrapper_cfg = wrapper
    cfg.env_cfg = dict(cfg.get('env_cfg', {}))
    cfg.env_cfg['dist_cfg'] = dict(backend='gloo')


def build_runner(cfg):
    """``Runner.from_cfg`` honouring a custom ``runner_type``; a model that
    needs mmcv CUDA ops this mmcv lacks stops here (:func:`check_cuda_ops`).
    """
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    check_cuda_ops(runner.model, cfg)
    return runner


def check_cuda_ops(model, cfg):
    """A :class:`~repnas_mm.errors.UserError` (one line) when ``model`` will
    run on a GPU but holds deformable convs (CenterNet's DCNv2 neck), and
    this mmcv was built with CPU ops only: their CUDA kernels are missing,
    and the run would otherwise stop at its first forward pass."""
    if not torch.cuda.is_available():
        return
    from mmcv.ops import (DeformConv2d, ModulatedDeformConv2d,
                          get_compiling_cuda_version)
    if get_compiling_cuda_version() != 'not available':
        return
    dcn = [name for name, m in model.named_modules()
           if isinstance(m, (DeformConv2d, ModulatedDeformConv2d))]
    if dcn:
        raise UserError(
            f'{dcn[0]} is a deformable conv (DCNv2), which runs on a GPU only '
            'with mmcv\'s CUDA ops, and this mmcv has CPU ops only (built '
            f'without a CUDA compiler): {_without_dcn(cfg)}, or get a '
            'compiler (python scripts/build_mmcv.py --check-cuda) and '
            'rebuild mmcv (python scripts/build_mmcv.py --rebuild, then '
            'make setup)')


def _without_dcn(cfg) -> str:
    """How to run ``cfg`` without deformable convs."""
    path = cfg.get('filename') or ''
    stem, ext = osp.splitext(path)
    if stem.endswith('_coco') and osp.isfile(stem[:-5] + '_nodcn_coco' + ext):
        return f'use {stem[:-5]}_nodcn_coco{ext} (plain up-convs)'
    return 'use plain up-convs (--cfg-options model.neck.use_dcn=False)'


def run_tool(main):
    """Call a tool's ``main``; a user's error ends it with one line, exit 1.

    An int that ``main`` returns is the exit status; anything else is 0.
    """
    try:
        status = main()
    except USER_ERRORS as exc:
        raise SystemExit(f'error: {exc}') from None
    raise SystemExit(status if isinstance(status, int) else 0)
