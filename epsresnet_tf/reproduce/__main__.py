"""`python -m epsresnet_tf.reproduce run|doc|gpu …` (the Makefile's reproduce targets)."""

import sys

from epsresnet_tf.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
