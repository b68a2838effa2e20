"""repnas_mm.atomic: all or nothing, with the usual file mode."""
import os

import pytest

from repnas_mm.atomic import atomic_path


def test_written_file_appears_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / 'sub' / 'out.bin'
    with atomic_path(target) as tmp:
        with open(tmp, 'wb') as f:
            f.write(b'x' * 10)
        assert not target.exists()  # only after the block
    assert target.read_bytes() == b'x' * 10
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert list(target.parent.iterdir()) == [target]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise RuntimeError('boom')
    assert target.read_text() == 'old'
    assert list(tmp_path.iterdir()) == [target]
