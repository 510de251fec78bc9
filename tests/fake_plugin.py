"""A plugin *file* (loaded via ``plugins: [tests/fake_plugin.py]``) providing the fake
source type ``fake`` and frontend ``fake`` from tests/fakes.py, for subprocess tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slam3r_app.hookspecs import hookimpl  # noqa: E402
from tests.fakes import FakeFrontend, FakeSource  # noqa: E402

FRONTENDS = ("fake",)
SOURCE_TYPES = ("fake",)


@hookimpl
def slam3r_make_source(source, context):
    if source.type == "fake":
        return FakeSource(n=10, first=source.first, stride=source.stride, max_frames=source.max_frames)
    return None


@hookimpl
def slam3r_make_frontend(name, context):
    return FakeFrontend() if name == "fake" else None
