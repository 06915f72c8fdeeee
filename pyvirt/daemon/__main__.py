"""``python -m pyvirt.daemon``: run pyvirtd."""

import sys

from pyvirt.daemon.main import main

sys.exit(main())
