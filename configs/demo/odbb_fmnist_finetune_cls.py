# Fine-tuning the demo's searched-and-fused classifier (odbb_fmnist_cls.py, fused by
# tools/deploy.py) for 3 more epochs: the baseline of the RefConv fine-tune
# (odbb_fmnist_refocus_cls.py), which changes only the backbone. The fused network is built with
# deploy=True and the searched branches (recorded in its deploy config; the fused layout is the
# same whatever the search kept); SGD at a fifth of the search's lr, cosine.
#   python tools/train.py configs/demo/odbb_fmnist_cls.py --work-dir work_dirs/odbb_fmnist_cls
#   python tools/deploy.py configs/demo/odbb_fmnist_cls.py \
#       work_dirs/odbb_fmnist_cls/epoch_9.pth --work-dir work_dirs/odbb_fmnist_cls/deploy
#   python tools/train.py configs/demo/odbb_fmnist_finetune_cls.py
_base_ = './odbb_fmnist_cls.py'

search_dir = 'work_dirs/odbb_fmnist_cls'
model = dict(
    backbone=dict(
        deploy=True, branches=search_dir + '/searched_arch.json', init_cfg=None))
load_from = search_dir + '/deploy/odbb_fmnist_cls_fused.pth'

# No search: the weights' SGD alone.
custom_hooks = []
optim_wrapper = dict(
    _delete_=True, optimizer=dict(_base_.optim_wrapper.optimizer, lr=0.01),
    paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
model_wrapper_cfg = None
max_epochs = 3
param_scheduler = dict(
    _delete_=True, type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True,
    convert_to_iter_based=True)
train_cfg = dict(max_epochs=max_epochs)
