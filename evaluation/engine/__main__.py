import sys

from evaluation.engine.cli import main

sys.exit(main())
