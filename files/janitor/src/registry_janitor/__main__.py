"""`python -m registry_janitor`."""

import sys

from registry_janitor.cli import main

sys.exit(main())
