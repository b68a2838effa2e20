# RepNAS search of VGG-16 on CIFAR-10 (RepNAS Sec. 4.1, Table 3): 600 epochs, batch 128.
# Budget 39 branches for the 13 blocks (RepVGG's three per block); Adam for alpha as on ImageNet;
# architecture fixed from epoch 480, then the searched network trains on.
#   python tools/train.py configs/odbb_vgg16_cifar10.py
_base_ = './baselines/odbb_vgg16_full_cifar10.py'

custom_hooks = [
    dict(type='RepNASHook', budget=39, temperature=1.0, fix_epoch=480, seed=0)
]
optim_wrapper = dict(
    constructor='RepNASOptimWrapperConstructor',
    alpha_optimizer=dict(
        type='Adam', lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0))
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)
