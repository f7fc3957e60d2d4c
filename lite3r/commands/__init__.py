"""Sub-commands of the ``lite3r`` CLI; each module has ``add_arguments(parser)`` and ``run(args)``.

Modules import torch lazily inside ``run`` so that ``lite3r --help`` stays instant.
"""
