"""Checkpoints saved before ODBB forms became classes (issue 31) still load.

``tests/data/legacy_forms/`` holds, per form, an ODBBNet and a converted CNN
saved by commit caf2453 (``make.py`` there), with their eval outputs. They
have no ``branch_form`` record; every way of loading them must give the
outputs they were saved with.
"""
import os.path as osp

import pytest
import torch

from repnas_mm.models.backbones.odbbnet import ODBBNet
from repnas_mm.models.loading import CheckpointMismatch, load_pretrained
from repnas_mm.rep import FORMS, convert_to_odbb, named_odbbs, reparameterize_model
from repnas_mm.rep.forms import forms_in_state

from .equivalence import assert_close_rel

DATA = osp.join(osp.dirname(__file__), 'data', 'legacy_forms')
ARCH = dict(name='legacy', stem_channels=8, channels=(8, 16), num_blocks=(2, 1),
            strides=(2, 2))


def saved(kind, form):
    path = osp.join(DATA, f'{kind}_{form}.pth')
    return path, torch.load(path, weights_only=True)


def backbone_state(ckpt):
    return {k[len('backbone.'):]: v for k, v in ckpt['state_dict'].items()}


@pytest.mark.parametrize('form', list(FORMS))
def test_a_legacy_odbbnet_checkpoint_loads_every_way(form):
    path, ckpt = saved('odbbnet', form)
    state = backbone_state(ckpt)
    assert not any(k.endswith('branch_form') for k in state)  # a legacy file
    assert forms_in_state(state) == {form}
    sharing = form != 'online'
    # Strictly, as mmengine or torch would load it.
    net = ODBBNet(ARCH, branches='full', weight_sharing=sharing, form=form)
    net.load_state_dict(state, strict=True)
    assert_close_rel(net.eval()(ckpt['input'])[-1], ckpt['output'], 1e-6)
    # Checked, into a multi-branch net and into a fused one.
    for deploy in (False, True):
        net = ODBBNet(ARCH, branches='full', weight_sharing=sharing, form=form,
                      deploy=deploy)
        load_pretrained(net, path, prefix='backbone.')
        assert_close_rel(net.eval()(ckpt['input'])[-1], ckpt['output'], 1e-5)
    # Saved again, it records its form, and loads as before.
    resaved = ODBBNet(ARCH, branches='full', weight_sharing=sharing, form=form)
    resaved.load_state_dict(state)
    net_state = resaved.state_dict()
    assert forms_in_state(net_state) == {form}
    assert int(net_state['stem.conv.branch_form']) == list(FORMS).index(form)
    again = ODBBNet(ARCH, branches='full', weight_sharing=sharing, form=form)
    again.load_state_dict(net_state, strict=True)
    assert_close_rel(again.eval()(ckpt['input'])[-1], ckpt['output'], 1e-6)


@pytest.mark.parametrize('form', list(FORMS))
def test_a_legacy_checkpoint_of_another_form_is_refused_in_one_line(form):
    path, _ = saved('odbbnet', form)
    other = next(f for f in FORMS if f != form)
    net = ODBBNet(ARCH, branches='full', form=other)
    with pytest.raises(CheckpointMismatch, match=f"form='{form}'") as info:
        load_pretrained(net, path, prefix='backbone.')
    assert '\n' not in str(info.value)


def test_a_recorded_form_is_checked_on_load():
    net = ODBBNet(ARCH, form='online')
    state = net.state_dict()
    with pytest.raises(ValueError, match='online form, this block is standard'):
        ODBBNet(ARCH, form='standard').load_state_dict(state, strict=False)


def tiny_cnn():
    import torch.nn as nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16))


@pytest.mark.parametrize('form', list(FORMS))
def test_a_legacy_converted_checkpoint_loads_and_fuses(form):
    _, ckpt = saved('converted', form)
    model = tiny_cnn()
    convert_to_odbb(model, torch.zeros(1, 3, 16, 16), branches='dbb', form=form)
    assert {b.form for b in named_odbbs(model).values()} == {form}
    model.load_state_dict(ckpt['state_dict'], strict=True)  # its grown branch too
    assert [b.active for b in named_odbbs(model).values()][1] == ('1x1', 'kxk')
    model.eval()
    assert_close_rel(model(ckpt['input']), ckpt['output'], 1e-6)
    reparameterize_model(model, inplace=True)
    assert_close_rel(model(ckpt['input']), ckpt['output'], 1e-5)


def test_the_old_booleans_are_deprecated_aliases_of_form():
    from repnas_mm.models.converted import build_converted
    from repnas_mm.rep import OnlineODBB, QuantFriendlyODBB
    with pytest.warns(DeprecationWarning, match="use form='online'"):
        net = ODBBNet(ARCH, online=True)
    assert net.form == 'online' and isinstance(net.stem.conv, OnlineODBB)
    with pytest.warns(DeprecationWarning, match="use form='quant_friendly'"):
        model = tiny_cnn()
        convert_to_odbb(model, torch.zeros(1, 3, 16, 16), quant_friendly=True)
    assert all(isinstance(b, QuantFriendlyODBB)
               for b in named_odbbs(model).values())
    with pytest.warns(DeprecationWarning, match='ODBBConverted'):
        model = build_converted(dict(type='ResNet_CIFAR', depth=18, _scope_='mmpretrain'),
                                online=True,
                                input_size=32)
    assert {b.form for b in named_odbbs(model).values()} == {'online'}
    # Same meaning twice is fine; a contradiction or both flags is one line.
    with pytest.warns(DeprecationWarning):
        assert ODBBNet(ARCH, form='online', online=True).form == 'online'
    with pytest.raises(ValueError, match="form='quant_friendly' and online=True"):
        ODBBNet(ARCH, form='quant_friendly', online=True)
    with pytest.raises(ValueError, match='do not combine'):
        ODBBNet(ARCH, online=True, quant_friendly=True)
    with pytest.raises(ValueError, match="unknown ODBB form 'orepa'; choose from "
                       'standard, online, quant_friendly'):
        ODBBNet(ARCH, form='orepa')


def test_the_block_points_from_the_old_booleans_to_the_form_classes():
    from repnas_mm.rep import ODBB
    with pytest.raises(TypeError, match=r"ODBB\(online=True\): the online "
                       r"form is a class now: use build_odbb\(\.\.\., "
                       r"form='online'\) \(or OnlineODBB"):
        ODBB(8, 8, online=True)
    with pytest.raises(TypeError, match='QuantFriendlyODBB'):
        ODBB(8, 8, quant_friendly=True)
