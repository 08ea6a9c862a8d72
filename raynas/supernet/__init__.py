"""Weight-sharing supernets: every candidate of a space in one module, with architecture parameters."""

from raynas.supernet.darts import DartsSupernet, derive_cell

__all__ = ["DartsSupernet", "derive_cell"]
