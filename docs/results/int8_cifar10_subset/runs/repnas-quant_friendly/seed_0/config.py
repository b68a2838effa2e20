auto_scale_lr = dict(base_batch_size=256)
custom_hooks = [
    dict(
        at_fix='retrain',
        bn_recalibration=512,
        budget=0.5,
        fix_epoch=6,
        seed=0,
        temperature=1.0,
        type='RepNASHook',
        warmup_epochs=2),
]
custom_imports = dict(
    allow_failed_imports=False, imports=[
        'repnas_mm',
    ])
data_preprocessor = dict(
    mean=[
        125.307,
        122.961,
        113.8575,
    ],
    num_classes=10,
    std=[
        51.5865,
        50.847,
        51.255,
    ],
    to_rgb=True)
data_root = 'data/cifar10_subset'
dataset_type = 'ImageNet'
default_hooks = dict(
    checkpoint=dict(
        _scope_='mmpretrain',
        interval=1,
        max_keep_ckpts=3,
        type='CheckpointHook'),
    logger=dict(_scope_='mmpretrain', interval=20, type='LoggerHook'),
    param_scheduler=dict(_scope_='mmpretrain', type='ParamSchedulerHook'),
    sampler_seed=dict(_scope_='mmpretrain', type='DistSamplerSeedHook'),
    timer=dict(_scope_='mmpretrain', type='IterTimerHook'),
    visualization=dict(
        _scope_='mmpretrain', enable=False, type='VisualizationHook'))
default_scope = 'mmpretrain'
env_cfg = dict(
    cudnn_benchmark=False,
    dist_cfg=dict(backend='nccl'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
load_from = None
log_level = 'INFO'
max_epochs = 26
model = dict(
    _scope_='mmpretrain',
    backbone=dict(
        arch=dict(
            channels=(
                16,
                32,
                64,
                128,
            ),
            name='demo',
            num_blocks=(
                1,
                2,
                2,
                1,
            ),
            stem_channels=16,
            strides=(
                2,
                2,
                2,
                2,
            )),
        branches='full',
        out_indices=(3, ),
        quant_friendly=True,
        type='ODBBNet',
        weight_sharing=True),
    head=dict(
        in_channels=128,
        loss=dict(loss_weight=1.0, type='CrossEntropyLoss'),
        num_classes=10,
        topk=(1, ),
        type='LinearClsHead'),
    neck=dict(type='GlobalAveragePooling'),
    type='ImageClassifier')
model_wrapper_cfg = dict(
    find_unused_parameters=True, type='MMDistributedDataParallel')
optim_wrapper = dict(
    alpha_optimizer=dict(
        betas=(
            0.5,
            0.999,
        ), lr=0.004, type='Adam', weight_decay=0.0),
    constructor='RepNASOptimWrapperConstructor',
    optimizer=dict(
        _scope_='mmpretrain',
        lr=0.05,
        momentum=0.9,
        type='SGD',
        weight_decay=0.0001),
    paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0))
param_scheduler = dict(
    T_max=20,
    _scope_='mmpretrain',
    begin=6,
    by_epoch=True,
    convert_to_iter_based=True,
    end=26,
    type='CosineAnnealingLR')
randomness = dict(deterministic=False, seed=0)
repnas_hook = dict(
    at_fix='continue',
    bn_recalibration=512,
    budget=0.5,
    fix_epoch=None,
    seed=0,
    temperature=1.0,
    type='RepNASHook',
    warmup_epochs=0)
repnas_optim_wrapper = dict(
    alpha_optimizer=dict(
        betas=(
            0.5,
            0.999,
        ), lr=0.0001, type='Adam', weight_decay=0.0),
    constructor='RepNASOptimWrapperConstructor')
resume = False
search_epochs = 6
test_cfg = dict()
test_dataloader = dict(
    batch_size=100,
    dataset=dict(
        data_prefix='val',
        data_root='/work/shared/data/cifar10_mini',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(scale=32, type='Resize'),
            dict(type='PackInputs'),
        ],
        type='CustomDataset'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmpretrain', shuffle=False, type='DefaultSampler'))
test_evaluator = dict(_scope_='mmpretrain', topk=(1, ), type='Accuracy')
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(scale=32, type='Resize'),
    dict(type='PackInputs'),
]
train_cfg = dict(by_epoch=True, max_epochs=26, val_interval=2)
train_dataloader = dict(
    batch_size=32,
    dataset=dict(
        data_prefix='train',
        data_root='/work/shared/data/cifar10_mini',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(scale=32, type='Resize'),
            dict(direction='horizontal', prob=0.5, type='RandomFlip'),
            dict(type='PackInputs'),
        ],
        type='CustomDataset'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmpretrain', shuffle=True, type='DefaultSampler'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(scale=32, type='Resize'),
    dict(direction='horizontal', prob=0.5, type='RandomFlip'),
    dict(type='PackInputs'),
]
val_cfg = dict()
val_dataloader = dict(
    batch_size=100,
    dataset=dict(
        data_prefix='val',
        data_root='/work/shared/data/cifar10_mini',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(scale=32, type='Resize'),
            dict(type='PackInputs'),
        ],
        type='CustomDataset'),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmpretrain', shuffle=False, type='DefaultSampler'))
val_evaluator = dict(_scope_='mmpretrain', topk=(1, ), type='Accuracy')
vis_backends = [
    dict(_scope_='mmpretrain', type='LocalVisBackend'),
]
visualizer = dict(
    _scope_='mmpretrain',
    type='UniversalVisualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
    ])
