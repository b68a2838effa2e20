# The equal-epoch control of the demo's default (configs/demo/odbb_fmnist_cls.py: search 3
# epochs, then the searched network retrained 6, 9 in all): the paper's one-stage run for the
# same 9 epochs (fixed at 3 and trained on, cosine over all 9), same seeds. Run by
#   python tools/compare_architectures.py configs/demo/odbb_fmnist_cls.py \
#       --work-dir work_dirs/default_demo --methods repnas searched repvgg \
#       --variants docs/results/default_demo/variants.py
HOOK = 'custom_hooks.0.'
variants = {
    'one_stage': {HOOK + 'at_fix': 'continue', 'param_scheduler.begin': 0,
                  'param_scheduler.T_max': 9, 'param_scheduler.end': 9},
}
