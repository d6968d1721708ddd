"""deepkmeans: compress CNNs by k-means weight sharing of filter rows, with Deep k-Means re-training.

Start with :mod:`deepkmeans.api` (``compress``, ``save``, ``load``, ``KMeansRegularizer``) or the
``deepkmeans`` command line.
"""

__version__ = "0.1.0"
