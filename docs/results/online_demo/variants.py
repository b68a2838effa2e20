# Offline vs online ODBBs (issue 17) under the default demo workflow (configs/demo/odbb_fmnist_cls.py:
# search 3 epochs, then the searched network retrained for 6), run by
#   python tools/compare_architectures.py configs/demo/odbb_fmnist_cls.py \
#       --work-dir work_dirs/online_demo --methods repnas \
#       --variants docs/results/online_demo/variants.py
# (and the same with configs/demo/odbb_cifar10_subset_cls.py). The method repnas-online is the
# same search and retraining with every block in online form (OREPA): one conv + one BN per
# block, branch BNs replaced by per-channel scales.
# repnas-online_no_sharing: online, each branch with its own kernel (RepNAS Eq. 5 weight sharing
# off): with a shared kernel an online 1x1/1xK/Kx1 branch only rescales part of the kxk kernel.
variants = {
    'online': {'model.backbone.online': True},
    'online_no_sharing': {'model.backbone.online': True, 'model.backbone.weight_sharing': False},
}
