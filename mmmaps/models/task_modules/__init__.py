from .mass_center_cost import MassCenterL1Cost

__all__ = ['MassCenterL1Cost']
