"""Drawing a genotype's cells as a PNG (matplotlib, no graphviz needed).

Each cell is drawn as the reference's `visualize.py` draws it: the two inputs
c_{k-2} and c_{k-1} on the left, the intermediate nodes in the middle, the
output c_{k} (their concatenation) on the right, every chosen op an arrow
labelled with its name.
"""
from __future__ import annotations

import os

from darts_tf.genotype import Genotype

_COLORS = {"skip_connect": "#7f7f7f", "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf",
           "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#ff7f0e", "dil_conv_3x3": "#2ca02c",
           "dil_conv_5x5": "#9467bd", "none": "#000000"}


def _draw_cell(ax, pairs, concat, title):
    num_nodes = len(pairs) // 2
    # Inputs at x=0, node i at x=1+i (staggered vertically), output at the right.
    pos = {0: (0.0, 0.8), 1: (0.0, 0.2)}
    for i in range(num_nodes):
        pos[i + 2] = (1.0 + i, 0.75 if i % 2 == 0 else 0.25)
    out = num_nodes + 1.2
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for k, (op, src) in enumerate(pairs):
        dst = k // 2 + 2
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        rad = 0.25 if k % 2 else -0.25
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color=_COLORS.get(op, "k"), lw=1.5,
                                    shrinkA=14, shrinkB=14, connectionstyle=f"arc3,rad={rad}"))
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2 + (0.06 if k % 2 else -0.06)
        ax.text(mx, my, op, fontsize=7, ha="center", va="center", color=_COLORS.get(op, "k"),
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for i in concat:
        ax.annotate("", xy=(out, 0.5), xytext=pos[i],
                    arrowprops=dict(arrowstyle="-|>", color="#bbbbbb", lw=1, shrinkA=14,
                                    shrinkB=14))
    for node, (x, y) in pos.items():
        color = "#a6d96a" if node < 2 else "#ffffbf"
        ax.text(x, y, names.get(node, str(node - 2)), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="k"))
    ax.text(out, 0.5, "c_{k}", ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", fc="#fdae61", ec="k"))
    ax.set_xlim(-0.4, out + 0.4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.axis("off")


def plot_genotype(genotype: Genotype, path: str | os.PathLike, title: str = "") -> str:
    """Writes a PNG with the normal cell above the reduction cell; returns the path."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    width = 3.0 + 2.2 * genotype.num_nodes
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 7.5))
    _draw_cell(top, genotype.normal, genotype.normal_concat, f"{title} normal cell".strip())
    _draw_cell(bottom, genotype.reduce, genotype.reduce_concat, f"{title} reduction cell".strip())
    fig.tight_layout()
    tmp = f"{os.fspath(path)}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return os.fspath(path)
