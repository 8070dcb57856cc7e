import sys

from session_engine.cli import main

sys.exit(main())
