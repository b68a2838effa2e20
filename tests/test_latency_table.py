"""The latency table of a width search (issue 32): measured in ONNX Runtime,
cached under a key, refused under another, interpolated between widths."""
import json

import pytest

from repnas_mm.deploy.latency_table import (LatencyTable, LatencyTableError,
                                            LayerShape, grid_shapes,
                                            grid_widths, network_shapes,
                                            runtime_key)
from repnas_mm.models.backbones.odbbnet import ODBBNet

from .conftest import REPO, run_tool

TINY = dict(stem_channels=16, channels=(16, 32), num_blocks=(1, 1),
            strides=(2, 2))


def test_a_table_is_measured_once_and_reused(tmp_path, monkeypatch):
    net = ODBBNet(TINY, deploy=True)
    key = runtime_key(threads=1)
    shapes = grid_shapes(net, 16, (0.5, 1.0), num_classes=10)
    # stem 3->{8,16}; block 1 {8,16}->{8,16}; block 2 {8,16}->{16,32};
    # head {16,32}->10
    assert len(shapes) == 2 + 4 + 4 + 2
    table = LatencyTable(key)
    assert table.measure(shapes, repeats=3, log=lambda line: None) == 12
    assert all(e['ms'] > 0 and e['repeats'] == 3
               for e in table.entries.values())
    path = tmp_path / 'table.json'
    table.save(str(path))
    again = LatencyTable.load(str(path), key)
    full = network_shapes(net, 16, 10)
    assert again.predict(full) == pytest.approx(table.predict(full))
    calls = []
    monkeypatch.setattr('repnas_mm.deploy.latency_table._time_onnx',
                        lambda *a: calls.append(a) or [1.0])
    assert again.measure(shapes) == 0 and not calls  # all cached
    # A finer grid adds block 2 at 24 channels (from 8 and 16) and the head
    # from 24: only those are measured.
    finer = grid_shapes(net, 16, (0.5, 0.75, 1.0), num_classes=10)
    assert again.measure(finer, log=lambda line: None) == 3 == len(calls)


def test_a_table_of_another_key_is_refused_in_one_line(tmp_path):
    key = runtime_key(threads=1)
    path = tmp_path / 'table.json'
    LatencyTable(key).save(str(path))
    for change in (dict(threads=2), dict(batch=8), dict(version='0.0')):
        with pytest.raises(LatencyTableError) as info:
            LatencyTable.load(str(path), dict(key, **change))
        (name, value), = change.items()
        message = str(info.value)
        assert f'with {name}={key[name]!r}, this run has {name}={value!r}' \
            in message and '\n' not in message
    assert json.loads(path.read_text())['key'] == key


def test_widths_between_measurements_are_interpolated():
    table = LatencyTable({})
    for cin, cout, ms in [(8, 8, 1.0), (8, 16, 2.0), (16, 8, 3.0),
                          (16, 16, 4.0)]:
        shape = LayerShape(cin, cout, size=8)
        table.entries[shape.name] = dict(
            cin=cin, cout=cout, kernel=3, stride=1, groups=1, size=8,
            kind='conv', ms=ms)
    assert table.ms(LayerShape(16, 8, size=8)) == 3.0
    assert table.ms(LayerShape(12, 12, size=8)) == pytest.approx(2.5)
    assert table.ms(LayerShape(8, 12, size=8)) == pytest.approx(1.5)
    with pytest.raises(LatencyTableError, match='no measurements around '
                       'conv 8-24 k3 s1 g1 @8'):
        table.ms(LayerShape(8, 24, size=8))
    with pytest.raises(LatencyTableError, match='around conv 8-8 k3 s2'):
        table.ms(LayerShape(8, 8, stride=2, size=8))  # another family


def test_grid_widths_are_multiples_of_8_and_of_the_groups():
    assert grid_widths(1280, (0.25, 0.5, 0.75, 1.0)) == [320, 640, 960,
                                                         1280]
    assert grid_widths(48, (0.25, 0.5, 0.75, 1.0)) == [16, 24, 32, 48]
    assert grid_widths(20, (0.25, ), 8, 2) == [8, 20]
    assert grid_widths(48, (0.1, ), 8, 3) == [24, 48]


@pytest.mark.slow
def test_the_tool_measures_a_config_and_checks_its_prediction(tmp_path):
    out = tmp_path / 'fmnist.json'
    args = ('tools/latency_table.py', REPO / 'configs/demo/odbb_fmnist_cls.py',
            '--out', out, '--input-size', '32', '--fractions', '1.0',
            '--threads', '1', '--repeats', '3', '--check')
    proc = run_tool(*args)
    assert 'to measure' in proc.stdout and 'predicted / measured' in \
        proc.stdout
    data = json.loads(out.read_text())
    assert data['key']['threads'] == 1 and data['entries']
    again = run_tool(*args[:-1])
    assert ', 0 to measure' in again.stdout
    bad = run_tool(*args[:-5], '2', check=False)  # --threads 2
    assert bad.returncode != 0 and 'was measured with threads=1' in \
        bad.stderr


def test_a_calibration_fits_whole_networks_and_is_saved(tmp_path):
    table = LatencyTable({})
    shape = LayerShape(8, 8, size=8)
    table.entries[shape.name] = dict(vars(shape), ms=2.0)
    assert table.predict([shape]) == table.layer_sum([shape]) == 2.0
    # Whole networks measured at 0.8 x their layer sum + 0.1 ms.
    table.calibrate([(1.0, 0.9), (2.0, 1.7), (4.0, 3.3)])
    assert table.calibration['scale'] == pytest.approx(0.8)
    assert table.calibration['offset'] == pytest.approx(0.1)
    assert table.predict([shape]) == pytest.approx(1.7)
    table.save(str(tmp_path / 't.json'))
    again = LatencyTable.load(str(tmp_path / 't.json'))
    assert again.predict([shape]) == pytest.approx(1.7)
    with pytest.raises(LatencyTableError, match='two or more'):
        table.calibrate([(1.0, 1.0)])
