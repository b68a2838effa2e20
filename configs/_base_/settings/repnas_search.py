# The RepNAS one-stage search (RepNAS Sec. 3.4, Algorithm 1) for any config whose model has
# multi-branch ODBBs: add this file as a second base and take the search's optimizer wrapper:
#
#   _base_ = ['<a training config>', '<...>/_base_/settings/repnas_search.py']
#   optim_wrapper = _base_.repnas_optim_wrapper             # alpha's own Adam (merged)
#   custom_hooks = [dict(_base_.repnas_hook, budget=66, fix_epoch=120)]   # per arch
#
# Per-arch configs derive their hook from `repnas_hook`, so a change here (temperature, warm-up)
# reaches every one of them (tests/test_configs.py checks it).
repnas_hook = dict(
    type='RepNASHook',
    budget=0.5,  # branches kept in all: a count, or a float ratio of all legal branches
    temperature=1.0,  # lambda of Eq. 11
    warmup_epochs=0,  # epochs that train the weights only
    fix_epoch=None,  # from this epoch on the architecture is fixed (top-k on alpha)
    seed=0,  # noise seed, the same on every rank
    bn_recalibration=512,  # validating the search: BN statistics re-estimated on N train images
    # At fix_epoch: 'continue' (the paper's one-stage run), 'reschedule' (lr back to its start for
    # schedulers that begin at fix_epoch) or 'retrain' (also the weights back to the run's start:
    # the searched network trained from scratch; docs/ablation.md). Not 'continue': no scheduler
    # may run across fix_epoch.
    at_fix='continue')
custom_hooks = [repnas_hook]
# Alpha's own Adam (RepNAS: lr 1e-4, betas (0.5, 0.999)); the weights keep the config's optimizer.
repnas_optim_wrapper = dict(
    constructor='RepNASOptimWrapperConstructor',
    alpha_optimizer=dict(
        type='Adam', lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0))
# Pruned branches get no gradient in an iteration: DDP must tolerate it.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)
