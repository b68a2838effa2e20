"""Conversion and fusion on every family a user may bring (issue 27).

The committed sweep (docs/results/fusion_sweep/, made by
tools/sweep_fusion.py) lists one model per timm module and every backbone
mmpretrain and mmdet export; these tests check that the list is whole
against the installed packages, that no row failed, and run the models
again: a representative dozen in the fast set, the rest marked slow. Each
must give what the committed row says: ``exact`` within the tolerance, or
left unconverted with the same reasons.
"""
import json

import pytest

from repnas_mm.fusion_sweep import (TOLERANCE, coverage_table,
                                    openmmlab_backbone_types, openmmlab_model,
                                    run_one, timm_model)

from .conftest import REPO

RESULTS = REPO / 'docs' / 'results' / 'fusion_sweep' / 'fusion_sweep.json'
ROWS = json.loads(RESULTS.read_text())['rows']
CHECKED = ('exact', 'unconverted')
LISTED = ('no BatchNorm', 'not registered', 'not standalone')

#: One of each kind of layout and outcome, cheap enough for the fast set;
#: the rest (vgg11_bn, res2net50_14w_8s of the report among them) is slow.
FAST = (
    'dpn48b', 'resnet26d', 'resnest14d',  # issue 27's report
    'repghostnet_050',  # blocks that fuse themselves beside ODBBs
    'fasternet_t0',  # refused: even kernels
    'test_efficientnet', 'regnetx_002',  # norm-act BNs; groups
    'mmpretrain::Res2Net',  # convs and BNs in two lists
    'mmpretrain::RepVGG',  # left alone: fuses itself
    'mmpretrain::ShuffleNetV2', 'mmdet::HRNet', 'mmdet::CSPNeXt',
)


def _key(row):
    return row['model'] if row['source'] == 'timm' else \
        f'{row["source"]}::{row["family"]}'


BY_KEY = {_key(r): r for r in ROWS if r['status'] in CHECKED}
SLOW = sorted(set(BY_KEY) - set(FAST))


def test_the_sweep_covers_every_timm_module_and_openmmlab_backbone():
    import timm
    families = {r['family'] for r in ROWS
                if r['source'] == 'timm' and r['family'] != 'reported'}
    assert families == set(timm.list_modules())
    backbones = {f'{r["source"]}::{r["family"]}' for r in ROWS
                 if r['source'] != 'timm'}
    assert backbones == set(openmmlab_backbone_types())
    assert set(FAST) <= set(BY_KEY)


def test_no_committed_row_failed_and_every_refusal_says_why():
    for row in ROWS:
        assert row['status'] in CHECKED + LISTED, row
        if row['status'] == 'exact':
            assert row['converted'] > 0 and row['stock_keys'], row
            assert row['error'] <= TOLERANCE[_dtype(row)], row
        elif row['status'] != 'no BatchNorm':
            assert row['detail'], row


def test_the_design_notes_carry_the_committed_table():
    design = (REPO / 'docs' / 'design.md').read_text()
    begin, end = ('<!-- fusion sweep table: begin -->\n',
                  '<!-- fusion sweep table: end -->')
    shown = design[design.index(begin) + len(begin):design.index(end)]
    assert shown.strip() == coverage_table(ROWS).strip()
    assert coverage_table(ROWS) in RESULTS.with_suffix('.md').read_text()


def _dtype(row):
    import torch
    return getattr(torch, row['dtype'])


def _check(key):
    build = (lambda: openmmlab_model(key)) if '::' in key else \
        (lambda: timm_model(key))
    got, row = run_one(build), BY_KEY[key]
    assert (got['status'], got['converted']) == (row['status'],
                                                 row['converted']), got
    assert got['left_alone'] == row['left_alone']
    if got['status'] == 'exact':
        assert got['error'] <= TOLERANCE[_dtype(got)]
        assert got['stock_keys']


@pytest.mark.parametrize('key', FAST)
def test_representative_models_fuse_exactly_or_are_refused(key):
    _check(key)


@pytest.mark.slow
@pytest.mark.parametrize('key', SLOW)
def test_every_model_of_the_sweep(key):
    _check(key)
