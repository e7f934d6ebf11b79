"""python -m reliability.bad_inputs: run the matrix (see matrix.main for the options)."""

import sys

from reliability.bad_inputs.matrix import main

sys.exit(main())
