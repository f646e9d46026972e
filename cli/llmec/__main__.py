import sys

from llmec.cli import main

sys.exit(main())
