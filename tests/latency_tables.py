"""A synthetic latency table for tests: every layer's 'milliseconds' are its
multiply-adds (exactly bilinear in the channels, so predictions between
grid widths are exact, and nothing is timed)."""
from repnas_mm.deploy.latency_table import LatencyTable, grid_shapes


def multiply_add_table(net, size, fractions=(0.25, 0.5, 0.75, 1.0),
                       num_classes=10):
    table = LatencyTable(dict(runtime='synthetic (multiply-adds)'))
    for shape in grid_shapes(net, size, fractions, num_classes):
        out = shape.size // shape.stride
        per_pixel = 1 if shape.kind == 'head' else \
            shape.kernel**2 * out * out / shape.groups
        table.entries[shape.name] = dict(
            vars(shape), ms=1e-6 * shape.cin * shape.cout * per_pixel)
    return table
