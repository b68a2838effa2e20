"""The searched-architecture figure: blocks x branch types (RepNAS
Figs. 6-11)."""
from repnas_mm.atomic import save_figure
from repnas_mm.rep import BRANCH_NAMES
from repnas_mm.rep.arch import Architecture


def plot_architecture(arch: Architecture, path: str, title: str = None):
    """Write a PNG: one column per block, one row per branch type.

    Colour is the final alpha (red: more important); a black dot marks a
    kept branch; hatched cells are branches the block cannot have (identity
    where channels or stride change). Written atomically.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    num_blocks = len(arch.blocks)
    alpha = np.full((len(BRANCH_NAMES), num_blocks), np.nan)
    kept = np.zeros_like(alpha, dtype=bool)
    for j, branches in enumerate(arch.blocks):
        for i, name in enumerate(BRANCH_NAMES):
            if arch.alpha is not None and name in arch.alpha[j]:
                alpha[i, j] = arch.alpha[j][name]
            kept[i, j] = name in branches
    finite = alpha[np.isfinite(alpha)]
    bound = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)

    width = max(6.0, 0.32 * num_blocks + 2.5)
    fig, ax = plt.subplots(figsize=(width, 3.6))
    cmap = plt.get_cmap('coolwarm').copy()
    cmap.set_bad('#d9d9d9')
    image = ax.imshow(
        np.ma.masked_invalid(alpha),
        cmap=cmap,
        vmin=-bound,
        vmax=bound,
        aspect='auto')
    for i, j in zip(*np.nonzero(np.isnan(alpha) & ~kept)):
        if arch.alpha is None or BRANCH_NAMES[i] not in arch.alpha[j]:
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor='white',
                          edgecolor='#b0b0b0', hatch='xx', linewidth=0))
    rows, cols = np.nonzero(kept)
    ax.scatter(cols, rows, s=18, c='black', marker='o')
    ax.set_yticks(range(len(BRANCH_NAMES)), BRANCH_NAMES)
    step = max(1, num_blocks // 24)
    ax.set_xticks(range(0, num_blocks, step))
    ax.set_xlabel('block')
    ax.set_title(title or (
        f'{arch.arch or "searched"}: {arch.num_branches} branches kept'
        + (f' (budget {arch.budget})' if arch.budget else '')
        + '   \u25cf kept, hatched: not legal'), fontsize=10)
    fig.colorbar(image, ax=ax, label='alpha', fraction=0.04, pad=0.02)
    fig.tight_layout()
    return save_figure(fig, path)
