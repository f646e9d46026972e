"""Serve plotly.js from the installed `plotly` Python package as static/plotly/plotly.min.js,
so the 4.6 MB bundle is never committed. Only that one file is exposed (not plotly's data sets)."""

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PREFIX = "plotly"
FILENAME = "plotly.min.js"


def _package_data() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    folder = Path(plotly.__file__).parent / "package_data"
    return folder if (folder / FILENAME).exists() else None


class PlotlyFinder(BaseFinder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        folder = _package_data()
        self.storage = FileSystemStorage(location=str(folder)) if folder else None
        if self.storage:
            self.storage.prefix = PREFIX

    def check(self, **kwargs):
        return []

    def find(self, path, find_all=False, **kwargs):
        if self.storage and path == f"{PREFIX}/{FILENAME}":
            match = self.storage.path(FILENAME)
            return [match] if find_all else match
        return [] if find_all else None

    def list(self, ignore_patterns):
        if self.storage:
            yield FILENAME, self.storage
