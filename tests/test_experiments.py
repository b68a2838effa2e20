"""repnas_mm.experiments: what the tools share (run a tool, read its files)."""
import json
import sys

import pytest

from repnas_mm.experiments import (ToolError, last_checkpoint, read_scalars,
                                   read_test_metrics, run_logged,
                                   tool_command)


def test_tool_command_runs_the_installed_module():
    assert tool_command('train', 'a.py', 3) == [
        sys.executable, '-m', 'repnas_mm.tools.train', 'a.py', '3']


def test_run_logged_appends_output_and_names_the_log_when_it_fails(
        tmp_path, capsys):
    log = tmp_path / 'x.log'
    run_logged([sys.executable, '-c', 'print("epoch 1"); print("quiet")'],
               str(log), echo=lambda line: line.startswith('epoch'))
    assert capsys.readouterr().out == 'epoch 1\n'
    # Bytes that are not UTF-8 are logged, replaced, not fatal.
    run_logged([sys.executable, '-c',
                'import sys; sys.stdout.buffer.write(b"\\xff ok\\n")'],
               str(log))
    assert log.read_text().splitlines()[-1] == '\ufffd ok'
    with pytest.raises(ToolError, match=r'failed \(exit 3\); log: .*x\.log'):
        run_logged([sys.executable, '-c', 'import sys; sys.exit(3)'],
                   str(log))
    lines = log.read_text().splitlines()
    assert lines[1:3] == ['epoch 1', 'quiet'] and lines[0].startswith('$ ')
    assert len([ln for ln in lines if ln.startswith('$ ')]) == 3


def test_readers_take_what_mmengine_wrote(tmp_path):
    for stamp, values in (('20260101_000000', [1, 2]),
                          ('20260102_000000', [3])):
        vis = tmp_path / stamp / 'vis_data'
        vis.mkdir(parents=True)
        (vis / 'scalars.json').write_text(
            ''.join(json.dumps(dict(loss=v)) + '\n' for v in values))
    assert [r['loss'] for r in read_scalars(str(tmp_path))] == [1, 2, 3]
    assert [r['loss'] for r in read_scalars(str(tmp_path),
                                            latest_only=True)] == [3]
    assert last_checkpoint(str(tmp_path)) is None
    (tmp_path / 'last_checkpoint').write_text('work/epoch_2.pth\n')
    assert last_checkpoint(str(tmp_path)) == 'work/epoch_2.pth'
    with pytest.raises(ToolError, match='wrote no metrics'):
        read_test_metrics(str(tmp_path / 'none'))
    (tmp_path / 'test' / 'stamp').mkdir(parents=True)
    (tmp_path / 'test' / 'stamp' / 'stamp.json').write_text(
        '{"accuracy/top1": 81.5}')
    assert read_test_metrics(str(tmp_path / 'test')) == {'accuracy/top1': 81.5}
