"""`python -m mcpserver start|config`."""

import sys

from mcpserver.cli import main

sys.exit(main())
