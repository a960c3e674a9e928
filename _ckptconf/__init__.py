"""ckptconf: a conformance suite and reference implementation for torch.distributed.checkpoint.

Subpackages: :mod:`ckptconf.reference` (the reference implementation),
:mod:`ckptconf.harness` (running code on N ranks) and :mod:`ckptconf.conformance`
(the suite any backend plugs into).
"""

__version__ = "0.1.0"
