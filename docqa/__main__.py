"""`python -m docqa`."""

import sys

from docqa.cli import console_main

sys.exit(console_main())
