"""``python -m ckptconf``: the ``ckptconf`` command (so ``torchrun -m ckptconf run ...`` works)."""

from ckptconf.cli import main

raise SystemExit(main())
