"""`python3 hack/localcluster <command>` (or `python3 -m localcluster` from hack/)."""

import sys
from pathlib import Path

if not __package__:
    # Run as a directory: make the package importable by its name.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcluster.cli import main

sys.exit(main())
