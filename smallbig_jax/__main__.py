"""`python -m smallbig_jax <command> [flags]`: the same as the `smallbig-jax` console command."""

import sys

from smallbig_jax.commands import main

sys.exit(main())
