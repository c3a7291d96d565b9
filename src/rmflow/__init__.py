"""rmflow: one-step generative modelling with Refined Mean Flow (RMFlow).

Conventions (shared by every module): prior at t = 0, data at t = 1, linear path
x_t = (1 - t) x0 + t x1, average-velocity network u(x, t, r, cond) with x_r = x_t + (r - t) u(x_t, t, r).
"""

__version__ = "0.1.0"
