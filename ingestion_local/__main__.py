import sys

from ingestion_local.ingestion import main

sys.exit(main())
