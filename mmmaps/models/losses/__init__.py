from .query_set_loss import QueryAssignment, query_set_losses

__all__ = ['QueryAssignment', 'query_set_losses']
