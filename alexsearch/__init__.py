"""alexsearch: semantic image search with the AlexNet of Krizhevsky, Sutskever & Hinton (2012)."""

__version__ = "0.1.0"
