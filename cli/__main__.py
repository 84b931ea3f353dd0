"""``python -m cli``: the ``sms-gateway`` command line."""

import sys

from cli.main import main

sys.exit(main())
