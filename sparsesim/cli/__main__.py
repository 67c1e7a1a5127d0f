import sys

from sparsesim.cli import main

sys.exit(main())
