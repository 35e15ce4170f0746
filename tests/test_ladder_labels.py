"""Numbers on the Pareto figure's points: readable (no overlaps, inside the axes) and deterministic."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from benchmarks.ladder import place_numbers, plot_pareto

# Rungs as the heat2d ladder puts them: pairs a few per cent apart in time and error, one at the right edge.
POINTS = [(1.1e-3, 0.039, "1"), (1.17e-3, 0.038, "2"), (1.6e-3, 0.016, "3"), (1.62e-3, 0.0161, "4"),
          (1.64e-3, 0.0159, "5"), (5.4e-3, 6e-4, "6"), (2.7e-2, 2.4e-3, "7")]


def _numbered_axes() -> tuple[Figure, Axes, list]:
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([x for x, _, _ in POINTS], [y for _, y, _ in POINTS], "o")
    ax.set(xscale="log", yscale="log")
    fig.tight_layout()
    return fig, ax, place_numbers(ax, POINTS)


def test_numbers_overlap_neither_each_other_nor_markers_and_stay_inside():
    fig, ax, notes = _numbered_axes()
    renderer = fig.canvas.get_renderer()
    boxes = [n.get_window_extent(renderer) for n in notes]
    assert [n.get_text() for n in notes] == [t for _, _, t in POINTS]
    half = 6.0 * fig.dpi / 72 / 2
    markers = [Bbox.from_bounds(px - half, py - half, 2 * half, 2 * half)
               for px, py in ax.transData.transform([(x, y) for x, y, _ in POINTS])]
    inside = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
        assert not any(box.overlaps(m) for m in markers), f"number {i + 1} covers a marker"
        assert not any(box.overlaps(b) for b in boxes[i + 1:]), f"number {i + 1} overlaps a later one"


def test_placement_is_deterministic():
    offsets = []
    for _ in range(2):
        fig, _, notes = _numbered_axes()
        offsets.append([(n.xyann, n.get_ha(), n.get_va()) for n in notes])
    assert offsets[0] == offsets[1]
    assert len(set(offsets[0])) > 1  # crowded points did not all keep the first offset


def test_pareto_figure_with_crowded_and_unstable_rungs(tmp_path):
    rungs = [{"label": f"setting {t}", "seconds": x, "error": y, "stable": True} for x, y, t in POINTS]
    rungs.append({"label": "dt=0.01", "seconds": 2e-3, "error": None, "stable": False})
    png = plot_pareto([{"name": "heat2d", "rungs": rungs, "reference": "n=61", "identity": 0.4,
                        "surrogate": {"seconds": 0.25, "error": 0.046}}], tmp_path / "pareto.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 1000
