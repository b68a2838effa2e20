"""Committed results that a clone can read and re-run.

A study runs in a work dir (``work_dirs/...``) and writes what the machine
it ran on needs: absolute data roots, the interpreter's path, checkpoint
paths, a config copy per run. :func:`publish` copies the evidence of a study
(its tables, the command that made them, and per run ``result.json`` plus
its log) into ``docs/results/<study>/`` with every such path made relative
(:func:`portable`), and :func:`machine_paths` finds what is left, for the
test that keeps the tree clean. Standard library only.
"""
import glob
import os
import os.path as osp
import re
import shlex
import shutil
import sys
import tempfile
from typing import Iterable, List, Optional, Sequence, Tuple

from repnas_mm.atomic import atomic_path
from repnas_mm.resources import MIM_DIR, PACKAGE_DIR

# An absolute path under a folder that names a machine's user, project or
# scratch space. The look-behind skips paths inside other paths (torch's
# build string has ``/opt/rh/gcc-toolset-13/root/usr/bin/c++``, a path of
# the machine that built torch, not of ours).
_MACHINE = re.compile(
    r'(?<![\w./~-])(?:/(?:work|root|home|tmp|Users|scratch|mnt/data)/'
    r'[^\s\'",;)\]}]*)')
# What a study's evidence keeps: tables and figures at the top, and per run
# its result, log and the architectures it drew or found.
KEEP_TOP = ('results.json', 'results.md', 'results.png', 'int8.json',
            'int8.md', 'int8_steps.json', 'int8_steps.md', 'summary.json',
            'accuracy_latency.png', 'latency_table.json', 'engines.json',
            'engines.md')
KEEP_RUN = ('result.json', 'train.log', 'random_arch.json', 'int8.json',
            'int8_table.md', 'searched_arch.json')
#: What a deployment (``tools/deploy.py --work-dir``) in a sub-folder of the
#: study leaves that a reader checks: its result, and its INT8 table.
KEEP_DEPLOY = ('deploy_result.json', 'int8.md')


def machine_paths(text: str, extra: Iterable[str] = ()) -> List[str]:
    """The absolute machine paths in ``text``: any under a user, project
    or scratch folder, and any of ``extra`` (this machine's own folders)."""
    found = _MACHINE.findall(text)
    for path in extra:
        if path:
            found += re.findall(r'(?<![\w./~-])' + re.escape(path), text)
    return found


def this_machine() -> List[str]:
    """This machine's own folders: home, temp dir, the working directory."""
    paths = {osp.expanduser('~'), tempfile.gettempdir(), os.getcwd()}
    return sorted(p.rstrip('/') + '/' for p in paths if p not in ('/', ''))


def portable(text: str, root: Optional[str] = None,
             aliases: Sequence[Tuple[str, str]] = ()) -> str:
    """``text`` with this machine's paths made relative.

    ``aliases``: ``(absolute, relative)`` pairs for folders outside ``root``
    (a data root, e.g. ``('/data/cifar', 'data/cifar10_subset')``), applied
    first, longest first. Then the interpreter's path becomes ``python`` and
    ``root`` (default: the working directory) the relative root: paths in
    it lose the prefix, ``root`` alone becomes ``.``.
    """
    root = osp.abspath(root or os.getcwd()).rstrip('/')
    pairs = sorted(aliases, key=lambda p: -len(p[0]))
    for absolute, relative in pairs:
        text = text.replace(absolute.rstrip('/'), relative.rstrip('/'))
    for python in {sys.executable, osp.realpath(sys.executable)}:
        text = text.replace(python, 'python')
    text = re.sub(r'\S*/\.?venv[^/\s]*/bin/python[\d.]*', 'python', text)
    text = text.replace(root + '/', '')
    return re.sub(re.escape(root) + r'(?![\w.-])', '.', text)


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command that is running, as a user would retype it where it
    runs, paths made portable: ``python tools/<tool>.py ARGS`` from the root
    of a checkout, ``python -m repnas_mm.tools.<tool> ARGS`` elsewhere
    (however the tool was started: by path, ``-m`` or ``mim``)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and _is_tool(argv[0]):
        name = osp.splitext(osp.basename(argv[0]))[0]
        local = osp.join('tools', name + '.py')
        argv[:1] = [local] if _is_tool(local) else [
            '-m', f'repnas_mm.tools.{name}']
    return portable('python ' + shlex.join(argv))


def _is_tool(path: str) -> bool:
    """Whether ``path`` is one of the package's tools (in ``repnas_mm/tools``
    or its copy ``.mim/tools``)."""
    if not osp.isfile(path):
        return False
    folder = osp.dirname(osp.realpath(path))
    return folder in {osp.realpath(osp.join(d, 'tools'))
                      for d in (PACKAGE_DIR, MIM_DIR)}


def evidence_files(work_dir: str) -> List[Tuple[str, str]]:
    """``(source, relative destination)`` of a study's evidence: the
    top-level tables (``KEEP_TOP``), each deployment's result in a
    sub-folder (``KEEP_DEPLOY``), and, under ``runs/``, each run's
    ``KEEP_RUN`` files (the search's architecture is written beside its
    checkpoints, in ``train/``)."""
    files = [(osp.join(work_dir, name), name) for name in KEEP_TOP
             if osp.isfile(osp.join(work_dir, name))]
    for result in sorted(glob.glob(osp.join(work_dir, '*',
                                            KEEP_DEPLOY[0]))):
        folder = osp.dirname(result)
        files += [(osp.join(folder, name),
                   osp.join(osp.basename(folder), name))
                  for name in KEEP_DEPLOY
                  if osp.isfile(osp.join(folder, name))]
    results = glob.glob(osp.join(work_dir, 'runs', '**', 'result.json'),
                        recursive=True)
    for run_dir in sorted(osp.dirname(p) for p in results):
        for name in KEEP_RUN:
            for src in (osp.join(run_dir, name),
                        osp.join(run_dir, 'train', name)):
                if osp.isfile(src):
                    files.append((src, osp.join(
                        osp.relpath(run_dir, work_dir), name)))
                    break
    return files


def publish(work_dir: str, out_dir: str, root: Optional[str] = None,
            aliases: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """Copy a study's evidence from ``work_dir`` to ``out_dir``, portable.

    Not the runs' config copies, checkpoints or test dumps:
    ``results.json`` records the command and each method's changes, from
    which every run's config is rebuilt. Raises ``ValueError`` naming the
    first machine path that :func:`portable` leaves, before writing
    anything. Returns the files written.
    """
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'{work_dir} is not a folder')
    texts = {}
    for src, rel in evidence_files(work_dir):
        if src.endswith('.png'):
            texts[rel] = (src, None)
            continue
        with open(src, encoding='utf-8', errors='replace') as f:
            text = portable(f.read(), root, aliases)
        left = machine_paths(text, this_machine())
        if left:
            raise ValueError(f'{src} still holds a machine path ({left[0]})')
        texts[rel] = (src, text)
    written = []
    for rel, (src, text) in texts.items():
        dst = osp.join(out_dir, rel)
        with atomic_path(dst) as tmp:
            if text is None:
                shutil.copyfile(src, tmp)
            else:
                with open(tmp, 'w', encoding='utf-8') as f:
                    f.write(text)
        written.append(dst)
    return written


__all__ = ['command_line', 'evidence_files', 'machine_paths', 'portable',
           'publish', 'this_machine']
