"""ckptconf.conformance: the conformance suite any checkpoint backend plugs into.

- :class:`Backend`: what a backend gives the suite; :data:`FEATURES` it may declare unsupported.
- :mod:`ckptconf.conformance.strategies`: hypothesis strategies for cases.
- :mod:`ckptconf.conformance.suites`: abstract ``*Tests`` classes to subclass.
- ``pytest --pyargs ckptconf.conformance --ckpt-backend X`` or ``ckptconf run --backend X``.
"""

from .backend import FEATURES, Backend, BackendRef
from .loading import BackendSpecError, load_backend

__all__ = ["FEATURES", "Backend", "BackendRef", "BackendSpecError", "load_backend"]
