"""Drawing a genotype's cells as a PNG (matplotlib only, no graphviz, no pyplot).

Each cell is drawn as the reference's `cnn/visualize.py` draws it with graphviz
(rankdir=LR): the inputs c_{k-2} (above) and c_{k-1} (below) on the left, the
intermediate nodes 0..n-1 on one row reading left to right, the output c_{k}
(their concatenation) on the right, every chosen op an arrow labelled with its
name. Arrows between non-adjacent nodes bow around the nodes between them;
concat arrows into c_{k} are grey and bow below the row.

`cell_layout` computes the geometry (pure, testable); `cells_figure` draws it
on a `matplotlib.figure.Figure` with the Agg canvas, so the process-wide
backend is left alone; `plot_genotype` writes that figure as a PNG.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

from darts_tf.genotype import Genotype

_COLORS = {"skip_connect": "#7f7f7f", "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf",
           "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#ff7f0e", "dil_conv_3x3": "#2ca02c",
           "dil_conv_5x5": "#9467bd", "none": "#000000"}

# Geometry is in inches: each axes is sized so that one data unit is one inch in both
# directions. Matplotlib computes arc3 curves in display space, so equal scales make its
# curves the same as the ones computed here.
NODE_W, NODE_H = 0.62, 0.32
_X0, _DX, _DX_OUT, _H_IN = 1.7, 1.9, 1.6, 0.95  # first node, node spacing, output gap, inputs
LABEL_PT = 7.5
# DejaVu Sans at 7.5 pt renders the op names at <= 0.58 pt of width per pt of font size per
# character and 0.105 in high (measured with the Agg renderer); the estimate stays above that.
_CHAR_W, _LABEL_H, _LABEL_PAD = 0.6, 1.25 * LABEL_PT / 72, 0.025
_T_CANDIDATES = (0.5, 0.44, 0.56, 0.38, 0.62, 0.32, 0.68, 0.26, 0.74)
_GAP = 0.04  # inches kept free around each label, so neighbouring labels stay apart
_DPI = 100


@dataclasses.dataclass(frozen=True)
class Edge:
    """One drawn arrow from state `src` to state `dst` (num_nodes + 2 is the output c_{k}).

    Attributes:
        op: The op name, or None for an unlabelled concat arrow into the output.
        rad: matplotlib's arc3 curvature (0: a straight arrow).
        label: Centre of the op label, a point of the arrow's curve (None for concat arrows).
    """
    src: int
    dst: int
    op: Optional[str]
    rad: float
    label: Optional[tuple]


@dataclasses.dataclass(frozen=True)
class CellLayout:
    """Node centres (state index -> (x, y) in inches; num_nodes + 2 is c_{k}) and edges."""
    positions: dict
    edges: tuple


def arc_point(p0: Sequence[float], p2: Sequence[float], rad: float, t: float) -> tuple:
    """Point at parameter `t` in [0, 1] of matplotlib's arc3 curve from `p0` to `p2`.

    Arc3 (matplotlib `ConnectionStyle.Arc3.connect`) is the quadratic Bezier curve with
    control point c = m + rad * (dy, -dx), m the midpoint and (dx, dy) = p2 - p0; the point
    is (1-t)^2 p0 + 2t(1-t) c + t^2 p2. At t = 0.5 it lies halfway from m to c, i.e.
    |rad| * |p2 - p0| / 2 off the chord; rad > 0 bows to the right of the direction of travel.
    """
    (x0, y0), (x2, y2) = p0, p2
    cx, cy = (x0 + x2) / 2 + rad * (y2 - y0), (y0 + y2) / 2 - rad * (x2 - x0)
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    return (a * x0 + b * cx + c * x2, a * y0 + b * cy + c * y2)


def label_box(op: str, xy: Sequence[float], margin: float = 0.0) -> tuple:
    """Estimated (x0, y0, x1, y1) in inches of the label `op` centred at `xy`, grown by `margin`."""
    w = len(op) * _CHAR_W * LABEL_PT / 72 + 2 * (_LABEL_PAD + margin)
    h = _LABEL_H + 2 * (_LABEL_PAD + margin)
    return (xy[0] - w / 2, xy[1] - h / 2, xy[0] + w / 2, xy[1] + h / 2)


def node_box(xy: Sequence[float], margin: float = 0.0) -> tuple:
    """(x0, y0, x1, y1) of the node box centred at `xy`, grown by `margin`."""
    return (xy[0] - NODE_W / 2 - margin, xy[1] - NODE_H / 2 - margin,
            xy[0] + NODE_W / 2 + margin, xy[1] + NODE_H / 2 + margin)


def boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(p, box) -> bool:
    return box[0] < p[0] < box[2] and box[1] < p[1] < box[3]


def _rad(p0, p2, bow: float) -> float:
    """arc3 rad that bows the curve `bow` inches off its chord (> 0: upwards, as dx > 0)."""
    length = ((p2[0] - p0[0]) ** 2 + (p2[1] - p0[1]) ** 2) ** 0.5
    return -2 * bow / length


def _bows(src: int, dst: int, out: int) -> list:
    """Candidate bows (inches, > 0 up) for an arrow, the preferred first."""
    if dst == out:  # concat arrows: below the row, longer ones lower, so they nest
        if src < 2:
            return [(0.5 if src == 0 else -0.5) * k for k in (1, 2, 3)]
        return [-0.3 * (out - 1 - src) * k for k in (1, 1.5, 2)]
    if src < 2:  # inputs fan out, c_{k-2} above the row and c_{k-1} below it
        side = 1 if src == 0 else -1
        return [side * b for b in (0.06 * (dst - 2), 0.2, 0.35, 0.5, 0.7)]
    if dst == src + 1:
        return [0.0, 0.3, -0.3, 0.5, -0.5]
    # Leave src at 20, 30, 40 (at most) degrees for skips over 1, 2, 3+ nodes, so that arcs from
    # one node part at once: a quadratic Bezier leaves at atan(4 * bow / length) off its chord.
    h = (dst - src) * _DX / 4 * math.tan(math.radians(10 + 10 * min(dst - src - 1, 3)))
    return [h, -h, 1.4 * h, -1.4 * h, 1.8 * h, -1.8 * h]


def cell_layout(pairs: Sequence[tuple], concat: Sequence[int]) -> CellLayout:
    """Places the nodes, routes the arrows and puts each op label on its arrow.

    Args:
        pairs: (op, input_index) pairs, two per intermediate node (Genotype.normal/reduce).
        concat: States concatenated into the output (Genotype.normal_concat/reduce_concat).

    Returns:
        The CellLayout: node i at x = 1.7 + 1.9 i on the row y = 0, so x grows strictly with
        the node index. Each arrow takes the first candidate curve that crosses no node it
        does not connect. Labels are then placed greedily, shortest arrow first, on a point
        of a candidate curve of their arrow where the label box meets no node and no earlier
        label, preferring boxes crossed by fewer other arrows, then the arrow's first curve,
        then points nearer the middle. If no point is free (far larger cells than DARTS'),
        the label goes to the middle of the arrow and may overlap another.
    """
    n = len(pairs) // 2
    out = n + 2
    pos = {0: (0.0, _H_IN), 1: (0.0, -_H_IN)}
    pos.update({i + 2: (_X0 + i * _DX, 0.0) for i in range(n)})
    pos[out] = (_X0 + (n - 1) * _DX + _DX_OUT, 0.0)
    nodes = {s: node_box(p) for s, p in pos.items()}
    wanted = [(src, k // 2 + 2, op) for k, (op, src) in enumerate(pairs)]
    wanted += [(src, out, None) for src in concat]

    def curve(src, dst, rad, steps=40):  # inner points of an arrow's curve
        return [arc_point(pos[src], pos[dst], rad, k / steps) for k in range(1, steps)]

    def clear(src, dst, rad):  # the curve passes no node but its two ends (with a margin)
        return not any(_inside(p, node_box(pos[s], 0.05)) for s in pos if s not in (src, dst)
                       for p in curve(src, dst, rad))

    # Routes first: the first candidate curve that meets no other node and does not retrace an
    # earlier arrow between the same two states.
    choices, routes = {}, {}
    for e, (src, dst, _) in enumerate(wanted):
        rads = [r for r in (_rad(pos[src], pos[dst], b) for b in _bows(src, dst, out))
                if r not in [routes[o] for o in routes if wanted[o][:2] == (src, dst)]]
        choices[e] = [r for r in rads if clear(src, dst, r)] or rads
        routes[e] = choices[e][0]
    points = {e: curve(*wanted[e][:2], routes[e]) for e in routes}
    # Then labels, shortest arrow first: the candidate point whose box (grown by a gap) meets
    # no node and no earlier label and, preferably, no other arrow; then the preferred curve,
    # then the point nearest the middle.
    labels = {}
    for e in sorted(routes, key=lambda e: abs(pos[wanted[e][1]][0] - pos[wanted[e][0]][0])):
        src, dst, op = wanted[e]
        if op is None:
            continue
        taken = [*nodes.values(), *(label_box(wanted[o][2], q, _GAP) for o, q in labels.items())]
        best = None
        for i, r in enumerate(choices[e]):
            if r != routes[e] and r in [routes[o] for o in routes if wanted[o][:2] == (src, dst)]:
                continue
            for j, t in enumerate(_T_CANDIDATES):
                p = arc_point(pos[src], pos[dst], r, t)
                box = label_box(op, p, _GAP)
                if any(boxes_overlap(box, b) for b in taken):
                    continue
                crossed = sum(any(_inside(q, box) for q in points[o]) for o in points if o != e)
                if best is None or (crossed, i, j) < best[0]:
                    best = ((crossed, i, j), r, p)
        if best is None:  # nowhere free: the middle of the preferred curve
            best = (None, routes[e], arc_point(pos[src], pos[dst], routes[e], 0.5))
        _, routes[e], labels[e] = best
        points[e] = curve(src, dst, routes[e])
    edges = tuple(Edge(src, dst, op, routes[e], labels.get(e))
                  for e, (src, dst, op) in enumerate(wanted))
    return CellLayout(pos, edges)


def _extent(layout: CellLayout, margin: float = 0.12) -> tuple:
    """(x0, y0, x1, y1) covering the nodes, the curves and the labels."""
    boxes = [node_box(p) for p in layout.positions.values()]
    for e in layout.edges:
        p0, p2 = layout.positions[e.src], layout.positions[e.dst]
        boxes += [(*q, *q) for q in (arc_point(p0, p2, e.rad, k / 20) for k in range(21))]
        if e.op is not None:
            boxes.append(label_box(e.op, e.label))
    return (min(b[0] for b in boxes) - margin, min(b[1] for b in boxes) - margin,
            max(b[2] for b in boxes) + margin, max(b[3] for b in boxes) + margin)


def _draw_cell(ax, layout: CellLayout, title: str) -> None:
    # pylint: disable-next=import-outside-toplevel
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    out = max(layout.positions)
    patches = {}
    for s, (x, y) in layout.positions.items():
        color = "#a6d96a" if s < 2 else "#fdae61" if s == out else "#ffffbf"
        patches[s] = ax.add_patch(FancyBboxPatch(
            (x - NODE_W / 2, y - NODE_H / 2), NODE_W, NODE_H, fc=color, ec="k", lw=1,
            boxstyle="round,pad=0,rounding_size=0.08", zorder=2))
        name = {0: "$c_{k-2}$", 1: "$c_{k-1}$", out: "$c_{k}$"}.get(s, str(s - 2))
        ax.text(x, y, name, ha="center", va="center", fontsize=10, zorder=3)
    for e in layout.edges:
        color = "#b0b0b0" if e.op is None else _COLORS.get(e.op, "k")
        ax.add_patch(FancyArrowPatch(
            layout.positions[e.src], layout.positions[e.dst], arrowstyle="-|>",
            connectionstyle=f"arc3,rad={e.rad}", patchA=patches[e.src], patchB=patches[e.dst],
            shrinkA=1, shrinkB=1, mutation_scale=10, color=color,
            lw=1.0 if e.op is None else 1.4, zorder=1 if e.op is None else 1.5))
        if e.op is not None:
            ax.text(*e.label, e.op, ha="center", va="center", fontsize=LABEL_PT, color=color,
                    zorder=4, bbox=dict(boxstyle="square,pad=0.15", fc="white", ec="none"))
    ax.set_title(title, fontsize=11, pad=4)
    ax.axis("off")


def cells_figure(genotype: Genotype, title: str = ""):
    """Returns a `matplotlib.figure.Figure` (Agg canvas) of the normal and reduction cells.

    Each cell gets an axes whose data unit is one inch in both directions (see `cell_layout`).
    """
    # pylint: disable-next=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    cells = [(cell_layout(genotype.normal, genotype.normal_concat), "normal cell"),
             (cell_layout(genotype.reduce, genotype.reduce_concat), "reduction cell")]
    # Whole pixels, so that one data unit is exactly one inch in both directions.
    extents = [(x0, y0, x1, y0 + math.ceil((y1 - y0) * _DPI) / _DPI)
               for x0, y0, x1, y1 in (_extent(layout) for layout, _ in cells)]
    x0 = min(e[0] for e in extents)
    x1 = x0 + math.ceil((max(e[2] for e in extents) - x0) * _DPI) / _DPI
    title_h = 0.35  # inches above each cell for its title
    height = sum(e[3] - e[1] + title_h for e in extents)
    fig = Figure(figsize=(x1 - x0, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    top = height
    for (layout, name), (_, y0, _, y1) in zip(cells, extents):
        top -= title_h
        ax = fig.add_axes((0, (top - (y1 - y0)) / height, 1, (y1 - y0) / height))
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        _draw_cell(ax, layout, f"{title} {name}".strip())
        top -= y1 - y0
    return fig


def plot_genotype(genotype: Genotype, path: str | os.PathLike, title: str = "") -> str:
    """Writes a PNG with the normal cell above the reduction cell; returns the path.

    The PNG is written to a temporary file and renamed, so a reader never sees half a file.
    Draws on matplotlib's Agg canvas directly: the process's pyplot backend is not touched.

    Args:
        genotype: The cells to draw.
        path: Where to write the PNG.
        title: Put before "normal cell" / "reduction cell" in the panel titles.

    Returns:
        `path` as a string.
    """
    fig = cells_figure(genotype, title)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png", dpi=_DPI)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
