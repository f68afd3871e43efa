import sys

from adaptjobs.cli import main

sys.exit(main())
