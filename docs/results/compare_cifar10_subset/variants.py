# The equal-epoch control of the CIFAR-10-subset default (configs/demo/odbb_cifar10_subset_cls.py:
# search 6 epochs, then the searched network retrained 20, 26 in all): the paper's one-stage run
# for the same 26 epochs (fixed at 6 and trained on, cosine over all 26), same seeds. Run by
#   python tools/compare_architectures.py configs/demo/odbb_cifar10_subset_cls.py \
#       --work-dir work_dirs/compare_cifar10_subset \
#       --variants docs/results/compare_cifar10_subset/variants.py
HOOK = 'custom_hooks.0.'
variants = {
    'one_stage': {HOOK + 'at_fix': 'continue', 'param_scheduler.begin': 0,
                  'param_scheduler.T_max': 26, 'param_scheduler.end': 26},
}
