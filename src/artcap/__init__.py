"""artcap: describe artworks in words."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import artcap` stays fast and the CLI imports torch only when needed.
    if name == "Captioner":
        from .captioner import Captioner

        return Captioner
    raise AttributeError(name)
