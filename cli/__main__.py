"""``python -m ckptconf.cli``: the ``ckptconf`` command."""

import sys

from . import main

sys.exit(main())
