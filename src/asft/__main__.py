import sys

from asft.cli import main

sys.exit(main())
