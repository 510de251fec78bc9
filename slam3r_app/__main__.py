"""``python -m slam3r_app`` == ``slam3r`` == ``python run_slam.py``."""
import sys

try:  # Ctrl-C while the modules load: no traceback
    from .cli import main
except KeyboardInterrupt:
    print("interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)
sys.exit(main())
