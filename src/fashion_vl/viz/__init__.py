"""Pictures of results: query / top-K grids for retrieval and composed retrieval (``fvl-eval +viz=true``)."""
