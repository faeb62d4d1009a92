import sys

from mptun.cli import main

sys.exit(main())
