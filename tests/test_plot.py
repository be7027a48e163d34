"""Tests for darts_tf.plot: the cell drawing's geometry, what is drawn, and the PNG written."""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.patches import ConnectionStyle, FancyArrowPatch

from darts_tf import plot
from darts_tf.genotype import PRIMITIVES, Genotype
from darts_tf.genotypes import DARTS_V1, DARTS_V2

# Edges that skip over nodes: node 3 reads both cell inputs, node-to-node arrows over 1-2 nodes.
SKIPS = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_3x3", 1),
            ("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 2), ("avg_pool_3x3", 0),
            ("dil_conv_3x3", 2), ("sep_conv_5x5", 1), ("skip_connect", 2), ("dil_conv_5x5", 3)],
    reduce_concat=[2, 3, 4, 5])
GENOTYPES = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "SKIPS": SKIPS}
CELLS = [pytest.param(g, cell, id=f"{name}-{cell}") for name, g in GENOTYPES.items()
         for cell in ("normal", "reduce")]


def _layout(genotype, cell):
    return plot.cell_layout(getattr(genotype, cell), getattr(genotype, f"{cell}_concat"))


def _curve(layout, edge, steps=2000):
    p0, p2 = layout.positions[edge.src], layout.positions[edge.dst]
    return np.array([plot.arc_point(p0, p2, edge.rad, t) for t in np.linspace(0, 1, steps)])


def _inside(points, box):
    return ((points[:, 0] > box[0]) & (points[:, 0] < box[2]) & (points[:, 1] > box[1])
            & (points[:, 1] < box[3]))


@pytest.mark.parametrize("rad", [-0.4, -0.1, 0.0, 0.25])
def test_arc_point_is_matplotlibs_arc3_curve(rad):
    p0, p2 = (0.3, 0.9), (5.1, -0.2)
    a, c, b = ConnectionStyle("arc3", rad=rad).connect(p0, p2).vertices
    for t in (0.0, 0.3, 0.5, 0.8, 1.0):  # quadratic Bezier through matplotlib's control point
        want = (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b
        np.testing.assert_allclose(plot.arc_point(p0, p2, rad, t), want, atol=1e-12)


@pytest.mark.parametrize("num_nodes", [1, 4, 6])
def test_nodes_read_left_to_right_on_one_row(num_nodes):
    pairs = [("skip_connect", 0), ("sep_conv_3x3", 1)] * num_nodes
    pos = plot.cell_layout(pairs, range(2, 2 + num_nodes)).positions
    xs = [pos[i + 2][0] for i in range(num_nodes)]
    assert all(a < b for a, b in zip(xs, xs[1:])), xs
    assert {pos[i + 2][1] for i in range(num_nodes)} == {0.0}  # one row: no zig-zag
    assert pos[0][0] == pos[1][0] < xs[0] and pos[0][1] > 0 > pos[1][1]  # c_{k-2} above c_{k-1}
    assert pos[num_nodes + 2] == (pytest.approx(xs[-1] + 1.6), 0.0)  # c_{k} on the right


@pytest.mark.parametrize("genotype,cell", CELLS)
def test_every_op_is_one_labelled_edge_and_every_concat_one_arrow(genotype, cell):
    layout = _layout(genotype, cell)
    out = genotype.num_nodes + 2
    want = [(src, k // 2 + 2, op) for k, (op, src) in enumerate(getattr(genotype, cell))]
    want += [(src, out, None) for src in getattr(genotype, f"{cell}_concat")]
    assert [(e.src, e.dst, e.op) for e in layout.edges] == want
    assert all((e.label is None) == (e.op is None) for e in layout.edges)


@pytest.mark.parametrize("genotype,cell", CELLS)
def test_labels_lie_on_their_arrows_outside_the_nodes(genotype, cell):
    layout = _layout(genotype, cell)
    nodes = [plot.node_box(p) for p in layout.positions.values()]
    for e in (e for e in layout.edges if e.op is not None):
        distance = np.min(np.hypot(*(_curve(layout, e) - e.label).T))
        assert distance < 2e-3, (e, distance)  # inches; the curve is sampled every ~3 mils
        assert not any(plot.boxes_overlap(plot.label_box(e.op, e.label), b) for b in nodes), e


@pytest.mark.parametrize("genotype,cell", CELLS)
def test_labels_do_not_overlap(genotype, cell):
    labelled = [e for e in _layout(genotype, cell).edges if e.op is not None]
    for a, b in itertools.combinations(labelled, 2):
        assert not plot.boxes_overlap(plot.label_box(a.op, a.label),
                                      plot.label_box(b.op, b.label)), (a, b)


@pytest.mark.parametrize("genotype,cell", CELLS)
def test_arrows_pass_no_other_node_and_concat_arrows_stay_visible(genotype, cell):
    layout = _layout(genotype, cell)
    labels = [plot.label_box(e.op, e.label) for e in layout.edges if e.op is not None]
    for e in layout.edges:
        points = _curve(layout, e, steps=400)
        for s, p in layout.positions.items():
            if s not in (e.src, e.dst):
                assert not _inside(points, plot.node_box(p)).any(), (e, s)
        if e.op is None:  # outside its two end nodes, labels hide under 10% of a concat arrow
            points = points[~_inside(points, plot.node_box(layout.positions[e.src]))
                            & ~_inside(points, plot.node_box(layout.positions[e.dst]))]
            hidden = np.mean(np.any([_inside(points, b) for b in labels], axis=0))
            assert hidden < 0.1, (e, hidden)


def test_two_ops_on_the_same_edge_get_distinct_curves():
    pairs = [("sep_conv_3x3", 1), ("skip_connect", 1), ("sep_conv_3x3", 2), ("max_pool_3x3", 2)]
    layout = plot.cell_layout(pairs, [2, 3])
    assert layout.edges[0].rad != layout.edges[1].rad
    assert layout.edges[2].rad != layout.edges[3].rad
    boxes = [plot.label_box(e.op, e.label) for e in layout.edges if e.op]
    assert not any(plot.boxes_overlap(a, b) for a, b in itertools.combinations(boxes, 2))


@pytest.mark.parametrize("name", GENOTYPES)
def test_drawn_labels_sit_on_drawn_arrows_within_their_estimated_boxes(name):
    """End to end on the Figure: matplotlib's own arrow paths and rendered label extents."""
    genotype = GENOTYPES[name]
    fig = plot.cells_figure(genotype, "t")
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for ax, cell in zip(fig.axes, ("normal", "reduce")):
        layout = _layout(genotype, cell)
        # One data unit is one inch in x and in y, so arc3 (in pixels) is the curve computed.
        np.testing.assert_allclose(np.diff(ax.transData.transform([(0, 0), (1, 1)]), axis=0),
                                   [[fig.dpi, fig.dpi]])
        arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        texts = [t for t in ax.texts if t.get_text() in PRIMITIVES]
        assert len(arrows) == len(layout.edges)
        assert [t.get_text() for t in texts] == [e.op for e in layout.edges if e.op]
        labelled = [(a, e) for a, e in zip(arrows, layout.edges) if e.op is not None]
        for (arrow, edge), text in zip(labelled, texts):
            # The shaft, clipped at the node boxes: the first curve after the first MOVETO.
            shaft = next(seg for seg, _ in arrow.get_path().iter_bezier() if seg.degree == 2)
            points = shaft(np.linspace(0, 1, 2000))
            assert np.min(np.hypot(*(points - text.get_position()).T)) < 0.01, edge  # inches
            drawn = text.get_bbox_patch().get_window_extent(renderer)
            x0, y0, x1, y1 = plot.label_box(edge.op, edge.label)
            (ex0, ey0), (ex1, ey1) = ax.transData.transform([(x0, y0), (x1, y1)])
            assert ex0 - 1 <= drawn.x0 and drawn.x1 <= ex1 + 1, (edge, drawn, (ex0, ex1))
            assert ey0 - 1 <= drawn.y0 and drawn.y1 <= ey1 + 1, (edge, drawn, (ey0, ey1))


def test_plot_genotype_keeps_the_backend_and_writes_a_png(tmp_path):
    """In a fresh process whose backend is svg: no backend switch, no pyplot import."""
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        from darts_tf import plot
        from darts_tf.genotypes import DARTS_V2
        out = plot.plot_genotype(DARTS_V2, {str(tmp_path / "cells.png")!r}, title="epoch 3")
        print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
        import matplotlib.pyplot as plt
        print("backend:", matplotlib.get_backend(), plt.get_backend())
        print("returned:", out)
    """)
    env = {**os.environ, "MPLBACKEND": "svg", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "pyplot imported: False" in result.stdout
    assert "backend: svg svg" in result.stdout
    assert f"returned: {tmp_path / 'cells.png'}" in result.stdout
    assert os.listdir(tmp_path) == ["cells.png"]  # the temporary file was renamed
    data = (tmp_path / "cells.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = (int.from_bytes(data[i:i + 4], "big") for i in (16, 20))
    assert (width, height) == (986, 562)  # 9.86 x 5.62 in at 100 dpi, two cells of 4 nodes


def test_plot_genotype_replaces_an_existing_file(tmp_path):
    path = tmp_path / "cells.png"
    path.write_bytes(b"old")
    assert plot.plot_genotype(SKIPS, path) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["cells.png"]
