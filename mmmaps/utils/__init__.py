# first, before anything heavy: is this the running program's checkout? (mmmaps/utils/checkout.py)
from .checkout import CheckoutMismatchError, check_checkout

check_checkout()

from .version_check import check_openmmlab_versions, check_version  # noqa: E402

__all__ = ['CheckoutMismatchError', 'check_checkout', 'check_openmmlab_versions',
           'check_version']
