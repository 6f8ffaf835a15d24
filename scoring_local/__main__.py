import sys

from scoring_local.score import main

sys.exit(main())
