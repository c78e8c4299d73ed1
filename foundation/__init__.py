"""The bottom layer every other one uses: the error classes (``errors``), the one atomic file write (``files``),
a run's file formats (``io``) and storage paths and URIs (``storage``). It imports nothing of the project."""
