"""A latency table: every fused layer shape a width search can choose,
measured on the runtime the network will ship on (issue 32).

A width-searched ODBBNet deploys as a plain stack of KxK conv + ReLU layers
(every branch subset fuses to the same conv), so its latency is, to a first
approximation, the sum of its layers' latencies, and each layer's is a
function of its shape only. The table holds measured latencies of
:class:`LayerShape` s in ONNX Runtime (CPU by default; CUDA when asked and
present) for one *key*: runtime, its version, provider, threads, batch. A
table file is only ever used under the key it was measured with: loading
it under another is refused with one line (:class:`LatencyTableError`).

The search chooses widths on a grid (multiples of 8); the table measures a
coarser grid of each layer's widths and :meth:`LatencyTable.predict`
interpolates bilinearly in (input, output) channels between measured
shapes of the same kernel, stride, groups and input size.
"""
import json
import os.path as osp
import statistics
import tempfile
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from repnas_mm.atomic import atomic_path
from repnas_mm.errors import UserError


class LatencyTableError(UserError):
    """A latency table that does not fit this run, or a shape it lacks."""


@dataclass(frozen=True)
class LayerShape:
    """One fused layer: ``conv(cin -> cout, kernel, stride, groups) + ReLU``
    on a ``size x size`` input (``kind='conv'``), or the classifier head,
    global average pooling + linear ``cin -> cout`` (``kind='head'``)."""
    cin: int
    cout: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    size: int = 224
    kind: str = 'conv'

    @property
    def name(self) -> str:
        if self.kind == 'head':
            return f'head {self.cin}-{self.cout} @{self.size}'
        return (f'conv {self.cin}-{self.cout} k{self.kernel} s{self.stride} '
                f'g{self.groups} @{self.size}')

    def family(self) -> tuple:
        """What interpolation may not cross: all but the channels."""
        return (self.kind, self.kernel, self.stride, self.groups, self.size)

    def module(self) -> nn.Module:
        if self.kind == 'head':
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(self.cin, self.cout))
        return nn.Sequential(
            nn.Conv2d(self.cin, self.cout, self.kernel, self.stride,
                      self.kernel // 2, groups=self.groups),
            nn.ReLU())


def runtime_key(device: str = 'cpu', threads: Optional[int] = None,
                batch: int = 1) -> dict:
    """What a measurement depends on besides the shapes."""
    import onnxruntime as ort
    provider = 'CUDAExecutionProvider' if device == 'cuda' else \
        'CPUExecutionProvider'
    if provider not in ort.get_available_providers():
        raise LatencyTableError(f'ONNX Runtime has no {provider} here '
                                f'(it has {ort.get_available_providers()})')
    return dict(runtime='onnxruntime', version=ort.__version__,
                provider=provider,
                threads=int(threads or torch.get_num_threads()),
                batch=int(batch))


class LatencyTable:
    """Measured milliseconds per :class:`LayerShape`, under one key."""

    def __init__(self, key: dict, entries: Optional[Dict[str, dict]] = None,
                 call_ms: Optional[float] = None,
                 calibration: Optional[dict] = None):
        self.key = dict(key)
        self.entries: Dict[str, dict] = dict(entries or {})
        #: What one call of the runtime costs by itself (a one-pixel ReLU):
        #: every layer timed alone pays it, the network once.
        self.call_ms = call_ms
        #: ``dict(scale, offset, points)``: whole networks measured against
        #: the sum of their layers (:meth:`calibrate`), or None.
        self.calibration = calibration

    # -- files ----------------------------------------------------------------
    @classmethod
    def load(cls, path: str, key: Optional[dict] = None) -> 'LatencyTable':
        """The table in ``path`` (an empty one if there is no file);
        :class:`LatencyTableError` if it was measured under another key.
        ``key=None``: the file's own key (the file must exist)."""
        if not osp.isfile(path):
            if key is None:
                raise LatencyTableError(
                    f'no latency table at {path}: measure it with '
                    'tools/latency_table.py')
            return cls(key)
        with open(path) as f:
            data = json.load(f)
        saved = data.get('key', {})
        if key is None:
            key = saved
        diff = [k for k in sorted(set(saved) | set(key))
                if saved.get(k) != key.get(k)]
        if diff:
            k = diff[0]
            raise LatencyTableError(
                f'latency table {path} was measured with {k}='
                f'{saved.get(k)!r}, this run has {k}={key.get(k)!r}: '
                'measure a table for this setting (another file)')
        return cls(key, data.get('entries'), data.get('call_ms'),
                   data.get('calibration'))

    def save(self, path: str):
        data = dict(key=self.key, call_ms=self.call_ms,
                    calibration=self.calibration,
                    entries=dict(sorted(self.entries.items())))
        with atomic_path(path) as tmp:
            with open(tmp, 'w') as f:
                json.dump(data, f, indent=1)
                f.write('\n')

    # -- measuring ------------------------------------------------------------
    def missing(self, shapes: Iterable[LayerShape]) -> List[LayerShape]:
        seen, out = set(), []
        for shape in shapes:
            if shape.name not in self.entries and shape.name not in seen:
                seen.add(shape.name)
                out.append(shape)
        return out

    def measure(self, shapes: Iterable[LayerShape], repeats: int = 7,
                min_seconds: float = 0.02,
                log: Callable[[str], None] = print) -> int:
        """Measure the shapes not in the table yet; how many were."""
        todo = self.missing(shapes)
        if todo and self.call_ms is None:
            self.call_ms = 1e3 * statistics.median(time_module(
                nn.ReLU(), torch.zeros(1, 1, 1, 1), self.key, repeats,
                min_seconds))
        start = time.time()
        for i, shape in enumerate(todo):
            times = _time_onnx(shape, self.key, repeats, min_seconds)
            median = statistics.median(times)
            self.entries[shape.name] = dict(
                asdict(shape), ms=1e3 * median,
                spread=(max(times) - min(times)) / median,
                repeats=len(times))
            if (i + 1) % 10 == 0 or i + 1 == len(todo):
                log(f'[latency table] {i + 1}/{len(todo)} shapes measured '
                    f'({time.time() - start:.0f} s)')
        return len(todo)

    # -- predicting -----------------------------------------------------------
    def ms(self, shape: LayerShape) -> float:
        """Milliseconds of one layer: measured, or interpolated bilinearly
        in (cin, cout) between measured shapes of its family."""
        entry = self.entries.get(shape.name)
        if entry is not None:
            return entry['ms']
        grid, cins, couts = self._family(shape.family())
        try:
            c0, c1 = _bracket(cins, shape.cin)
            o0, o1 = _bracket(couts, shape.cout)
            corners = [[grid[(c, o)] for o in (o0, o1)] for c in (c0, c1)]
        except (KeyError, ValueError):
            raise LatencyTableError(
                f'the latency table has no measurements around {shape.name}'
                ' (measure the table for this network)') from None
        tc = 0.0 if c1 == c0 else (shape.cin - c0) / (c1 - c0)
        to = 0.0 if o1 == o0 else (shape.cout - o0) / (o1 - o0)
        low = corners[0][0] * (1 - to) + corners[0][1] * to
        high = corners[1][0] * (1 - to) + corners[1][1] * to
        return low * (1 - tc) + high * tc

    def _family(self, family: tuple):
        """(grid {(cin, cout): ms}, sorted cins, sorted couts) of a family,
        cached until the table changes."""
        if getattr(self, '_cached_size', None) != len(self.entries):
            self._families, self._cached_size = {}, len(self.entries)
        if family not in self._families:
            grid = {(e['cin'], e['cout']): e['ms']
                    for e in self.entries.values()
                    if LayerShape(**_shape_fields(e)).family() == family}
            self._families[family] = (grid, sorted({c for c, _ in grid}),
                                      sorted({c for _, c in grid}))
        return self._families[family]

    def layer_sum(self, shapes: Sequence[LayerShape]) -> float:
        """The sum over a network's layers, each without the cost of a call
        of its own (:attr:`call_ms`), plus one call."""
        call = self.call_ms or 0.0
        return call + sum(max(self.ms(s) - call, 0.0) for s in shapes)

    def predict(self, shapes: Sequence[LayerShape]) -> float:
        """Milliseconds of a network: :meth:`layer_sum`, calibrated when the
        table is (``scale * sum + offset``)."""
        total = self.layer_sum(shapes)
        if self.calibration:
            total = self.calibration['scale'] * total + \
                self.calibration['offset']
        return total

    def calibrate(self, points: Sequence[tuple]):
        """Fit ``measured = scale * layer_sum + offset`` by least squares on
        ``(layer_sum, measured)`` pairs of whole networks (two or more)."""
        if len(points) < 2:
            raise LatencyTableError('calibrating needs two or more measured '
                                    'networks')
        xs, ys = zip(*points)
        mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
        var = sum((x - mean_x)**2 for x in xs)
        scale = sum((x - mean_x) * (y - mean_y)
                    for x, y in zip(xs, ys)) / var if var else 1.0
        self.calibration = dict(scale=scale, offset=mean_y - scale * mean_x,
                                points=[list(p) for p in points])


def _shape_fields(entry: dict) -> dict:
    return {k: entry[k] for k in LayerShape.__dataclass_fields__}


def _bracket(values: List[int], x: int):
    """The two grid values around ``x`` (equal when ``x`` is one)."""
    if not values or x < values[0] or x > values[-1]:
        raise ValueError(x)
    i = bisect_left(values, x)
    if values[i] == x:
        return x, x
    return values[i - 1], values[i]


def _time_onnx(shape: LayerShape, key: dict, repeats: int,
               min_seconds: float) -> List[float]:
    """Seconds per call of the shape's module in ONNX Runtime, per repeat."""
    torch.manual_seed(0)
    example = torch.randn(key['batch'], shape.cin, shape.size, shape.size)
    return time_module(shape.module(), example, key, repeats, min_seconds)


def export_static(module: nn.Module, example: torch.Tensor, path: str) -> str:
    """``module`` exported to ONNX at ``path`` for timing: every shape fixed
    to ``example``'s (what ONNX Runtime times is the shape the table keys),
    input named ``input``. Deployment exports with dynamic axes and checks
    (:func:`repnas_mm.deploy.onnx.export_onnx`)."""
    import warnings

    from .onnx import OPSET
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module.eval(), (example, ), path,
                          input_names=['input'], opset_version=OPSET,
                          dynamo=False)
    return path


def ort_runner(model, example: torch.Tensor,
               key: dict) -> Callable[[], None]:
    """``model`` (a module, exported here, or an ONNX file) loaded in ONNX
    Runtime under ``key`` (provider, threads): a call runs it once on
    ``example``."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = key['threads']
    if isinstance(model, str):
        session = ort.InferenceSession(model, options,
                                       providers=[key['provider']])
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = export_static(model, example, osp.join(folder, 'm.onnx'))
            session = ort.InferenceSession(path, options,
                                           providers=[key['provider']])
    # Input and output stay bound to ONNX Runtime tensors made once: a
    # layer timed alone would otherwise pay a copy of its input and output
    # feature maps every call, which inside a network it does not.
    value = ort.OrtValue.ortvalue_from_numpy(example.numpy())
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, 'cpu')
    session.run_with_iobinding(binding)  # warm-up; allocates the outputs
    for output, got in zip(session.get_outputs(),
                           binding.get_outputs()):
        binding.bind_ortvalue_output(output.name, got)
    return lambda: session.run_with_iobinding(binding)


def time_module(module: nn.Module, example: torch.Tensor, key: dict,
                repeats: int = 7, min_seconds: float = 0.02) -> List[float]:
    """Seconds per call of ``module`` in ONNX Runtime (:func:`ort_runner`),
    per repeat; each repeat runs it for at least ``min_seconds``."""
    run = ort_runner(module, example, key)
    run()
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-6)
    iters = max(1, int(min_seconds / once))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            run()
        times.append((time.perf_counter() - start) / iters)
    return times


class PlainClassifier(nn.Module):
    """A fused ODBBNet's last output, pooled, through a linear head: the
    network the table's layers and head add up to."""

    def __init__(self, backbone: nn.Module, num_classes: Optional[int]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.widths[-1], num_classes) \
            if num_classes else None

    def forward(self, x):
        y = self.backbone(x)[-1]
        if self.head is None:
            return y
        return self.head(y.mean((2, 3)))


def network_shapes(net, input_size: int, num_classes: Optional[int] = None,
                   widths: Optional[Sequence[int]] = None
                   ) -> List[LayerShape]:
    """The layer shapes of an ODBBNet (``widths``: others than its own) at
    ``input_size``, plus a classifier head of ``num_classes`` if given."""
    widths = list(widths or net.widths)
    shapes, size, cin = [], input_size, net.stem.conv.in_channels
    for layer, cout in zip(net.layers(), widths):
        conv = layer.conv
        shapes.append(LayerShape(cin, cout, conv.kernel_size, conv.stride,
                                 conv.groups, size))
        size = (size + 2 * (conv.kernel_size // 2) - conv.kernel_size) // \
            conv.stride + 1
        cin = cout
    if num_classes:
        shapes.append(LayerShape(cin, num_classes, size=size, kind='head'))
    return shapes


def grid_widths(width: int, fractions: Sequence[float], multiple: int = 8,
                groups: int = 1) -> List[int]:
    """``width`` times each fraction, rounded to a multiple of ``multiple``
    (and of ``groups``), at least one multiple; ``width`` itself always."""
    step = multiple * groups // _gcd(multiple, groups)
    out = {width}
    for f in fractions:
        out.add(min(width, max(step, int(round(width * f / step)) * step)))
    return sorted(out)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def grid_shapes(net, input_size: int, fractions: Sequence[float],
                num_classes: Optional[int] = None,
                multiple: int = 8) -> List[LayerShape]:
    """Every layer shape on the width grid of an ODBBNet: each layer at
    every grid width of its output and of its input (the previous layer's
    grid; the image channels for the stem), and the head at every grid
    width of the last layer."""
    full = network_shapes(net, input_size, num_classes)
    grids = [grid_widths(s.cout, fractions, multiple, s.groups)
             for s in full[:len(net.layers())]]
    shapes = []
    for i, shape in enumerate(full[:len(grids)]):
        ins = [shape.cin] if i == 0 else grids[i - 1]
        shapes += [LayerShape(cin, cout, shape.kernel, shape.stride,
                              shape.groups, shape.size)
                   for cin in ins for cout in grids[i]
                   if cin % shape.groups == 0]
    if num_classes:
        head = full[-1]
        shapes += [LayerShape(cin, num_classes, size=head.size, kind='head')
                   for cin in grids[-1]]
    return shapes


def multiply_add_table(net, input_size: int,
                       fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                       num_classes: Optional[int] = None) -> LatencyTable:
    """A table whose 'milliseconds' are each layer's multiply-adds (x 1e-6)
    on the grid: a proxy where no runtime was measured (benchmarks, tests),
    exactly bilinear in the channels, and nothing is timed."""
    table = LatencyTable(dict(runtime='multiply-adds'))
    for shape in grid_shapes(net, input_size, fractions, num_classes):
        out = (shape.size - 1) // shape.stride + 1
        per_pixel = 1 if shape.kind == 'head' else \
            shape.kernel**2 * out * out / shape.groups
        table.entries[shape.name] = dict(
            asdict(shape), ms=1e-6 * shape.cin * shape.cout * per_pixel)
    return table


__all__ = ['LatencyTable', 'LatencyTableError', 'LayerShape',
           'PlainClassifier', 'grid_shapes', 'grid_widths',
           'export_static', 'multiply_add_table', 'network_shapes',
           'ort_runner', 'runtime_key', 'time_module']
