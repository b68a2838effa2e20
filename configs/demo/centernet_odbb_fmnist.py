# Demo: CenterNet-ODBB (../centernet_odbb_a0_nodcn_coco.py) shrunk to the Fashion-MNIST detection
# canvases (tools/prepare_demo_data.py) on a CPU: the demo's searched classifier
# (odbb_fmnist_cls.py) as the backbone, 128x128 inputs, a few epochs. Plain up-convolutions
# (no DCNv2), so the deployed detector runs in ONNX Runtime.
_base_ = '../centernet_odbb_a0_nodcn_coco.py'

classes = ('T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle_boot')
data_root = 'data/demo/fmnist_det/'
model = dict(
    data_preprocessor=dict(mean=[72.94] * 3, std=[90.02] * 3),
    backbone=dict(
        arch=dict(
            _delete_=True,
            name='demo',
            stem_channels=16,
            channels=(16, 32, 64, 128),
            num_blocks=(1, 2, 2, 1),
            strides=(2, 2, 2, 2)),
        branches='work_dirs/demo/classifier/epoch_6.pth'),
    neck=dict(in_channels=128, num_deconv_filters=(64, 32, 32)),
    bbox_head=dict(num_classes=10, in_channels=32, feat_channels=32))

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='RandomCenterCropPad',
        crop_size=(128, 128),
        ratios=(0.8, 0.9, 1.0, 1.1, 1.2),
        mean=[0, 0, 0],
        std=[1, 1, 1],
        to_rgb=True,
        test_pad_mode=None),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        times=1,
        dataset=dict(
            metainfo=dict(classes=classes),
            data_root=data_root,
            ann_file='instances_train.json',
            data_prefix=dict(img='train/'),
            filter_cfg=dict(filter_empty_gt=True, min_size=1),
            pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        metainfo=dict(classes=classes),
        data_root=data_root,
        ann_file='instances_val.json',
        data_prefix=dict(img='val/')))
val_evaluator = dict(ann_file=data_root + 'instances_val.json')
# Final numbers come from held-out canvases (items no val canvas shows).
test_dataloader = dict(
    val_dataloader,
    dataset=dict(
        val_dataloader['dataset'],
        ann_file='instances_test.json',
        data_prefix=dict(img='test/')))
test_evaluator = dict(val_evaluator, ann_file=data_root + 'instances_test.json')

optim_wrapper = dict(optimizer=dict(lr=2e-3))
max_epochs = 24
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[18, 22],
        gamma=0.1)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=8)
default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(interval=8, max_keep_ckpts=1))
randomness = dict(seed=0)
