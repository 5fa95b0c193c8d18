from .mass_center_cost import MassCenterL1Cost
from .squared_dice_cost import SquaredDiceCost

__all__ = ['MassCenterL1Cost', 'SquaredDiceCost']
