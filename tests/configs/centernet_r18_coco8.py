# Smoke config: the stock mmdet CenterNet (ResNet-18, DCNv2 neck) recipe on the real COCO
# photos of tests/data/coco8, one iteration of 4 images. Tests override data_root.
_base_ = 'mmdet::centernet/centernet_r18-dcnv2_8xb16-crop512-140e_coco.py'

data_root = '{{ fileDirname }}/../data/coco8/'
# No ImageNet download: random initialisation.
model = dict(backbone=dict(init_cfg=None))
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        times=1,
        dataset=dict(
            data_root=data_root,
            ann_file='instances_train.json',
            data_prefix=dict(img='train/'),
            filter_cfg=dict(filter_empty_gt=True, min_size=1))))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file='instances_val.json',
        data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
