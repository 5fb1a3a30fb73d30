"""artcap: describe artworks in words."""

__version__ = "0.1.0"
