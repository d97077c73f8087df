"""The Store a Python user holds, and what it keeps: the cache of verified files, fetch, import and publish."""
