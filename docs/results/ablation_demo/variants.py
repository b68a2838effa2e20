# Ablations of the demo's one-stage search as it was at 99fb512 (configs/demo/odbb_fmnist_cls.py:
# 6 epochs, warm-up 1, fixed from epoch 4 and trained on, cosine lr over the 6 epochs, alpha lr
# 0.02, budget 22 of 44), run by (the --cfg-options put today's config back to that baseline)
#   python tools/compare_architectures.py configs/demo/odbb_fmnist_cls.py \
#       --work-dir work_dirs/ablation_demo --methods repnas searched repvgg \
#       --variants docs/results/ablation_demo/variants.py \
#       --cfg-options train_cfg.max_epochs=6 custom_hooks.0.fix_epoch=4 \
#       custom_hooks.0.at_fix=continue param_scheduler.begin=0 param_scheduler.end=6 \
#       param_scheduler.T_max=6
# Each entry is a method repnas-<name>: the search with these config options (docs/ablation.md).
HOOK = 'custom_hooks.0.'


def _second_schedule(fix, end):
    """Constant lr while searching, then a cosine over the searched network's epochs."""
    return {'param_scheduler.begin': fix, 'param_scheduler.end': end,
            'param_scheduler.T_max': end - fix}


variants = {
    # The search policy while the weights train.
    'no_noise': {HOOK + 'noise': False},  # rank alpha itself, no logistic noise
    'soft_gates': {HOOK + 'gate': 'soft'},  # branches scaled by their score in training
    'no_weight_sharing': {'model.backbone.weight_sharing': False},  # RepNAS Eq. 5 off
    'alpha_lr_0.005': {'optim_wrapper.alpha_optimizer.lr': 0.005},
    'alpha_lr_0.05': {'optim_wrapper.alpha_optimizer.lr': 0.05},
    # How long the fixed phase is (6 epochs in all).
    'fix_2': {HOOK + 'fix_epoch': 2},
    'fix_5': {HOOK + 'fix_epoch': 5},
    # What happens at the fix point (6 epochs in all, fixed at 4).
    'reschedule': {HOOK + 'at_fix': 'reschedule', **_second_schedule(4, 6)},
    'retrain': {HOOK + 'at_fix': 'retrain', **_second_schedule(4, 6)},
    # Search 3 epochs (warm-up 1), then the searched network 6 more: 9 epochs in all, and
    # the last 6 are the schedule the 'searched' method trains its architecture with.
    'continue_9ep': {'train_cfg.max_epochs': 9, HOOK + 'fix_epoch': 3,
                     'param_scheduler.T_max': 9, 'param_scheduler.end': 9},
    'reschedule_9ep': {'train_cfg.max_epochs': 9, HOOK + 'fix_epoch': 3,
                       HOOK + 'at_fix': 'reschedule', **_second_schedule(3, 9)},
    'retrain_9ep': {'train_cfg.max_epochs': 9, HOOK + 'fix_epoch': 3,
                    HOOK + 'at_fix': 'retrain', **_second_schedule(3, 9)},
}
