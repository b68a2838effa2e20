# DyRep (dynamic re-parameterization) for any config whose model has ODBBs with
# weight_sharing=False (an ODBBConverted backbone, or an ODBBNet built so): add this file as a
# second base, and derive a hook with other settings from `dyrep_hook`:
#
#   _base_ = ['<a training config>', '<...>/_base_/settings/dyrep.py']
#   custom_hooks = [dict(_base_.dyrep_hook, interval=2, num_grow=2)]
dyrep_hook = dict(
    type='DyRepHook',
    interval=5,  # epochs between steps
    grow_to='dbb',  # the branches a grown block gets
    metric='synflow',  # saliency: synflow | snip | grad_norm
    num_grow=1,  # blocks grown per step
    bn_scale=0.01,  # BN weight of a new branch
    deparam_ratio=0.05)  # de-parameterize below this fraction of the main BN scale
custom_hooks = [dyrep_hook]
# Inactive branches get no gradient: DDP must tolerate it.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)
