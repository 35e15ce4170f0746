"""Reference intervals of the DFG flow-around-a-cylinder benchmark (Schafer & Turek 1996).

M. Schafer, S. Turek, "Benchmark computations of laminar flow around a cylinder", in Flow Simulation
with High-Performance Computers II, Notes on Numerical Fluid Mechanics 52 (1996) 547-566. Channel
2.2 x 0.41, cylinder of diameter 0.1 centred at (0.2, 0.2), density 1, viscosity 1e-3, parabolic
inflow of maximum 1.5 U (mean U). Case 2D-1: U = 0.2 (Re = 20), steady. Case 2D-2: U = 1 (Re = 100),
periodic vortex shedding; its quantities are the maximum drag and lift coefficients over a period and
the Strouhal number ``St = f D / U`` of the lift. The intervals bracket the converged results of the
participating codes (Schafer & Turek 1996, Tables 4 and 5).
"""

from __future__ import annotations

GEOMETRY = {"length": 2.2, "height": 0.41, "diameter": 0.1, "center": (0.2, 0.2), "density": 1.0, "viscosity": 1e-3}
MEAN_VELOCITY = {"2D-1": 0.2, "2D-2": 1.0}
PRESSURE_POINTS = ((0.15, 0.2), (0.25, 0.2))  # dp = p(front) - p(back)

INTERVALS = {
    "2D-1": {"cd": (5.57, 5.59), "cl": (0.0104, 0.0110), "dp": (0.1172, 0.1176)},
    "2D-2": {"cd_max": (3.22, 3.24), "cl_max": (0.99, 1.01), "strouhal": (0.295, 0.305)},
}
STEADY = {"2D-1": True, "2D-2": False}
