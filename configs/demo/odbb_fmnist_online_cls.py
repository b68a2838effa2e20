# The demo's search and retraining (./odbb_fmnist_cls.py) with online blocks (OREPA form): one
# conv + one BN per block in training, whatever branches it keeps (docs/online.md).
_base_ = './odbb_fmnist_cls.py'

model = dict(backbone=dict(form='online'))
