import sys

from carebridge.cli import main

sys.exit(main())
