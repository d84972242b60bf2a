"""wa: what happens to a network's weights after and around training.

Average a trajectory of checkpoints (SWA), take an EMA over it, graft runs layer by layer by
weight entropy (Filter Grafting), re-estimate BatchNorm statistics, and report per-layer entropy.

The package imports nothing heavy at the top level so that ``wa --help`` stays instant; the
library functions are imported from their modules (``from wa_cli.average import average``).
"""

__version__ = "0.1.0"
