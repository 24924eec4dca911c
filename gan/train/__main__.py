"""``python -m gan.train enhancer ...``: the enhancer's command line (:func:`gan.train.enhancer.main`), the command
its model cards record."""

import sys

from gan.train.enhancer import main

sys.exit(main())
