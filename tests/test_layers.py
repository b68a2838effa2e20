"""The package's layers (docs/design.md): no import cycle, function-level
imports included, and ``repnas_mm.rep`` free of OpenMMLab (issue 31)."""
import ast

from .conftest import REPO

PACKAGE = REPO / 'repnas_mm'
OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmpretrain', 'mmdeploy')


def _modules():
    """name -> path of every module of the package (not the tools' copy
    under .mim)."""
    out = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(REPO).with_suffix('').parts
        if '.mim' in parts:
            continue
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        out[name] = path
    return out


def _imports(name, path, modules):
    """The modules of the package that ``name`` imports anywhere in its
    file, and every top-level module name it imports."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    ours, top = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.'))
                                            - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            targets = [f'{base}.{a.name}' for a in node.names] + [base]
        else:
            continue
        for target in targets:
            top.add(target.split('.')[0])
            while target and target not in modules:
                target = target.rpartition('.')[0]
            if target and target != name:
                ours.add(target)
    return ours, top


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules)
            for name, path in modules.items()}


def _cycle(edges):
    """One import cycle of ``edges`` (name -> names), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    # Every module may import the top package (``import repnas_mm``
    # registers the OpenMMLab modules; Python runs it first anyway); any
    # other edge counts, a subpackage's ``__init__`` included.
    edges = {name: ours - {'repnas_mm'} for name, (ours, _) in graph.items()}
    assert _cycle(edges) is None, ' -> '.join(_cycle(edges))
    assert 'repnas_mm.rep.block' in graph  # the walk found the package


def test_the_checker_finds_a_cycle():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                           'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_rep_needs_only_torch():
    for name, (ours, top) in _graph().items():
        if name == 'repnas_mm.rep' or name.startswith('repnas_mm.rep.'):
            assert not top & set(OPENMMLAB), (name, top & set(OPENMMLAB))
            outside = {m for m in ours if not m.startswith('repnas_mm.rep')}
            assert outside <= {'repnas_mm', 'repnas_mm.atomic'}, (name,
                                                                  outside)


FORM_FLAGS = ('online', 'quant_friendly')


def test_nothing_outside_the_form_classes_branches_on_a_form():
    """No code reads ``.online`` / ``.quant_friendly`` off an object, and
    no condition tests those deprecated flags, except ``rep/forms.py``
    (the one place that maps them to a form)."""
    found = []
    for name, path in _modules().items():
        if name == 'repnas_mm.rep.forms':
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in FORM_FLAGS:
                found.append(f'{name}:{node.lineno} .{node.attr}')
            if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)):
                names = {n.id for n in ast.walk(node.test)
                         if isinstance(n, ast.Name)}
                if names & set(FORM_FLAGS):
                    found.append(f'{name}:{node.lineno} tests a flag')
    assert not found, found
