"""Catalogue search: embed a catalogue into a FAISS index folder, query it, serve it over HTTP.

- ``catalogue``: catalogue readers (a data folder in our layout, a CSV or JSON-lines table).
- ``build``: the resumable, sharded embedding build that writes an index folder.
- ``vector_index``: the FAISS index and the max-over-vectors item score.
- ``item_table``: the id -> metadata table (SQLite).
- ``searcher``: an opened index folder and the text / image / composed / outfit queries.
- ``service``: the FastAPI app behind ``fvl-serve`` and its web page (``static/``).

FAISS (``pip install 'fashion-vl[search]'``) and FastAPI (``[serve]``) are imported only when used.
"""

from fashion_vl.search.build import BuildError, BuildReport, build_index
from fashion_vl.search.catalogue import Catalogue, CatalogueError, CatalogueItem, SkippedRow, read_catalogue
from fashion_vl.search.embedder import EmbedderLike, load_embedder
from fashion_vl.search.searcher import CatalogueIndex, Hit, Searcher, SearchError
from fashion_vl.search.vector_index import IndexSpec, VectorIndex, brute_force_top_k

__all__ = [
    "BuildError",
    "BuildReport",
    "Catalogue",
    "CatalogueError",
    "CatalogueIndex",
    "CatalogueItem",
    "EmbedderLike",
    "Hit",
    "IndexSpec",
    "SearchError",
    "Searcher",
    "SkippedRow",
    "VectorIndex",
    "brute_force_top_k",
    "build_index",
    "load_embedder",
    "read_catalogue",
]
