"""The language of fashion-search: products, queries, search results, ports and services.

Pure: imports only the standard library, numpy and its own modules.
"""
