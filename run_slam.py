#!/usr/bin/env python
"""Entry point: ``python run_slam.py --config demo.yaml`` (see ``--help``)."""
import sys

from slam3r_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
