#!/usr/bin/env python
"""Entry point: ``python run_slam.py --config demo.yaml`` (see ``--help``)."""
import sys

if __name__ == "__main__":
    try:  # Ctrl-C while the modules load: no traceback
        from slam3r_app.cli import main
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
