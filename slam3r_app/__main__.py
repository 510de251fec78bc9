"""``python -m slam3r_app`` == ``slam3r`` == ``python run_slam.py``."""
import sys

from .cli import main

sys.exit(main())
