# Smoke config: stock mmdet CenterNet with the small demo ODBBNet as backbone, on coco8.
_base_ = './centernet_r18_coco8.py'

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        # the layout of configs/demo/odbb_fmnist_cls.py
        arch=dict(
            name='demo',
            stem_channels=16,
            channels=(16, 32, 64, 128),
            num_blocks=(1, 2, 2, 1),
            strides=(2, 2, 2, 2)),
        branches='full'),
    neck=dict(in_channels=128, use_dcn=False))
