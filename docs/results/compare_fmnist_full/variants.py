# The equal-epoch control of the all-of-Fashion-MNIST default
# (configs/demo/odbb_fmnist_full_cls.py: search 1 epoch, then the searched
# network retrained 2, 3 in all): the paper's one-stage run for the same
# 3 epochs (fixed at 1 and trained on, cosine over all 3), same seeds. Run by
#   python tools/compare_architectures.py configs/demo/odbb_fmnist_full_cls.py \
#       --work-dir work_dirs/compare_fmnist_full --seeds 0 1 \
#       --variants docs/results/compare_fmnist_full/variants.py
HOOK = 'custom_hooks.0.'
variants = {
    'one_stage': {HOOK + 'at_fix': 'continue', 'param_scheduler.begin': 0,
                  'param_scheduler.T_max': 3, 'param_scheduler.end': 3},
}
