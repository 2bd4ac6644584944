"""`python -m docqa`."""

import sys

from docqa.cli import main

sys.exit(main())
