import sys

from evaluation.engine.server import main

sys.exit(main(sys.argv[1:]))
