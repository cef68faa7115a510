"""`python -m epsresnet_tf.cli …`: the `epsresnet` command."""

import sys

from epsresnet_tf.cli import main

sys.exit(main())
